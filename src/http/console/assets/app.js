// Izwi's operator console: plain DOM, no framework, nothing from another
// origin. Every value from the server goes into the page as text, never as
// markup. Charts and the call timeline are SVG drawn here.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
let me = null;
let live = null;
let talk = null;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', headers: {}, ...options };
  if (init.method && init.method !== 'GET' && me) init.headers['X-CSRF-Token'] = me.csrf;
  if (init.body && typeof init.body !== 'string') {
    init.body = JSON.stringify(init.body);
    init.headers['Content-Type'] = 'application/json';
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    showSignIn('');
    throw new Error('signed out');
  }
  const body = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || r.statusText);
  return body;
}

function ms(v) { return v === null || v === undefined ? '–' : Math.round(v) + ' ms'; }
function when(t) { return t ? new Date(t).toLocaleString() : '–'; }
function secs(v) { return v === null || v === undefined ? '–' : (v / 1000).toFixed(1) + ' s'; }

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, ...rows));
}

function showSignIn(message) {
  me = null;
  stopLive();
  $('nav').hidden = true;
  $('view').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
}

async function signIn(ev) {
  ev.preventDefault();
  try {
    const r = await fetch('/console/api/session', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ credential: $('credential').value }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      $('sign-in-error').textContent = 'Refused: ' + (body.error || r.status);
      return;
    }
    $('credential').value = '';
    signedIn(body);
  } catch (e) {
    $('sign-in-error').textContent = String(e);
  }
}

function signedIn(who) {
  me = who;
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  $('view').hidden = false;
  $('who').textContent = who.name + (who.admin ? ' (admin)' : '');
  route();
}

async function signOut() {
  await api('/console/api/sign-out', { method: 'POST' }).catch(() => {});
  showSignIn('Signed out.');
}

function stopLive() {
  if (live) live.close();
  live = null;
}

function route() {
  if (!me) return;
  stopLive();
  const [page, arg] = (location.hash.slice(1) || 'live').split('/');
  // A call from this page ends when the operator leaves the page.
  if (talk && !talk.state.ended) talk.hangUp();
  talk = null;
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === '#' + page);
  }
  const view = $('view');
  view.replaceChildren();
  view.dataset.page = page;
  const pages = { live: livePage, history: historyPage, call: callPage, latency: latencyPage, agents: agentsPage, talk: talkPage };
  (Object.hasOwn(pages, page) ? pages[page] : livePage)(view, arg).catch((e) => view.append(el('p', { class: 'error' }, String(e.message || e))));
}

// Live: calls in progress, from server-sent events.
async function livePage(view) {
  const body = el('tbody', { id: 'live-calls' });
  const status = el('p', { class: 'muted', id: 'live-status' }, 'Connecting…');
  view.append(el('h2', {}, 'Calls in progress'), status,
    el('table', {}, el('thead', {}, el('tr', {}, ...['Call', 'Transport', 'Agent', 'Codec', 'Duration', 'Turns', 'State', 'Last response', ''].map((h) => el('th', {}, h)))), body));
  live = new EventSource('/console/api/live');
  live.addEventListener('calls', (e) => {
    const data = JSON.parse(e.data);
    status.textContent = data.calls.length + ' call(s) in progress';
    body.replaceChildren(...data.calls.map((c) => el('tr', { 'data-call': c.id },
      el('td', {}, el('a', { href: '#call/' + encodeURIComponent(c.id) }, c.id)),
      el('td', {}, c.transport), el('td', {}, c.agent || '–'), el('td', {}, c.codec || '–'),
      el('td', { class: 'num' }, secs(data.now_ms - c.started_at_ms)),
      el('td', { class: 'num' }, c.turns),
      el('td', { class: 'state-' + c.state }, c.state.replace('_', ' ')),
      el('td', { class: 'num' }, ms(c.last_response_ms)),
      el('td', {}, me.admin ? el('button', { class: 'danger', type: 'button', onclick: () => hangUp(c.id) }, 'Hang up') : null))));
  });
  live.onerror = () => {
    status.textContent = 'Reconnecting…';
    // Closed for good (signed out, the session expired): ask who we are.
    if (live && live.readyState === EventSource.CLOSED) api('/console/api/me').then(() => route()).catch(() => {});
  };
}

async function hangUp(id) {
  try {
    await api('/console/api/calls/' + encodeURIComponent(id) + '/hangup', { method: 'POST' });
  } catch (e) {
    alert('Hang-up refused: ' + e.message);
  }
}

// History: the records, filtered, a page at a time.
async function historyPage(view) {
  const agent = el('input', { id: 'filter-agent', placeholder: 'any' });
  const outcome = el('select', { id: 'filter-outcome' }, ...['', 'completed', 'failed', 'interrupted', 'open'].map((o) => el('option', { value: o }, o || 'any')));
  const from = el('input', { type: 'datetime-local', id: 'filter-from' });
  const to = el('input', { type: 'datetime-local', id: 'filter-to' });
  const body = el('tbody', { id: 'history-calls' });
  const more = el('button', { type: 'button', id: 'history-more', hidden: '' }, 'More');
  let cursor = null;
  async function load(reset) {
    const q = new URLSearchParams({ limit: '50' });
    if (agent.value) q.set('agent', agent.value);
    if (outcome.value) q.set('outcome', outcome.value);
    if (from.value) q.set('from', String(new Date(from.value).getTime()));
    if (to.value) q.set('to', String(new Date(to.value).getTime()));
    if (!reset && cursor) q.set('cursor', cursor);
    const page = await api('/console/api/calls?' + q);
    if (reset) body.replaceChildren();
    for (const c of page.calls) {
      body.append(el('tr', { 'data-call': c.id },
        el('td', {}, el('a', { href: '#call/' + encodeURIComponent(c.id) }, when(c.started_at_ms))),
        el('td', {}, c.transport || '–'), el('td', {}, c.agent || '–'),
        el('td', { class: 'num' }, secs(c.duration_ms)), el('td', { class: 'num' }, c.turns),
        el('td', {}, el('span', { class: c.outcome === 'failed' ? 'pill bad' : 'pill' }, c.outcome)),
        el('td', {}, c.hangup_cause || '–')));
    }
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => load(false));
  const form = el('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); load(true); } },
    el('label', {}, 'Agent ', agent), el('label', {}, 'Outcome ', outcome),
    el('label', {}, 'From ', from), el('label', {}, 'To ', to), el('button', { type: 'submit' }, 'Filter'));
  view.append(el('h2', {}, 'Call history'), form,
    table(['Started', 'Transport', 'Agent', 'Duration', 'Turns', 'Outcome', 'Ended by'], []), more);
  view.querySelector('table').replaceChild(body, view.querySelector('tbody'));
  await load(true);
}

// One call: its turns on a timeline.
async function callPage(view, id) {
  const data = await api('/console/api/calls/' + encodeURIComponent(decodeURIComponent(id || '')));
  const c = data.call;
  view.append(...[el('h2', {}, 'Call ' + c.id),
    el('p', {}, `${c.transport || '–'} · agent ${c.agent || '–'} · ${c.codec || '–'} · started ${when(c.started_at_ms)} · ${secs(c.duration_ms)} · ${c.outcome} (${c.hangup_cause || '–'}) · ${c.turns} turns, ${c.barge_ins} barge-ins, ${c.dtmf} keys`),
    timeline(c, data.turns, data.actions),
    el('p', { class: 'legend' }, el('span', { class: 'muted' }, 'Caller speech (blue), recognition (amber), model to first token (red), voice to first audio (green), first audio (green line), barge-in (red line), actions (purple).')),
    table(['Turn', 'Outcome', 'Speech', 'Response', 'Recognition', 'First token', 'First audio', 'Words heard', 'Words spoken', 'Barge-in'],
      data.turns.map((t) => el('tr', {},
        el('td', {}, t.greeting ? 'greeting' : t.index), el('td', {}, t.outcome),
        el('td', { class: 'num' }, t.speech_onset_ms === null || t.speech_onset_ms === undefined ? '–' : secs(t.speech_onset_ms) + ' – ' + secs(t.speech_end_ms)),
        el('td', { class: 'num' }, ms(t.response_ms)), el('td', { class: 'num' }, ms(t.asr_ms)),
        el('td', { class: 'num' }, ms(t.llm_first_token_ms)), el('td', { class: 'num' }, ms(t.tts_first_audio_ms)),
        el('td', { class: 'num' }, t.words_heard), el('td', { class: 'num' }, t.words_spoken),
        el('td', {}, t.interrupted ? 'yes' : '')))),
    data.actions.length ? table(['At', 'Action', 'From', 'Target', 'Result'], data.actions.map((a) => el('tr', {},
      el('td', { class: 'num' }, secs(a.at_ms)), el('td', {}, a.action), el('td', {}, a.source), el('td', {}, a.target || '–'), el('td', {}, a.result)))) : null,
    data.tools.length ? table(['Turn', 'Tool', 'Took', 'Outcome'], data.tools.map((t) => el('tr', {},
      el('td', {}, t.turn), el('td', {}, t.name), el('td', { class: 'num' }, ms(t.duration_ms)), el('td', {}, t.outcome)))) : null].filter((e) => e));
}

function timeline(call, turns, actions) {
  const W = 960, left = 110, lane = 26, top = 24;
  const lanes = ['Caller', 'Recognition', 'Model', 'Voice', 'Actions'];
  const H = top + lanes.length * lane + 30;
  let end = call.duration_ms || 0;
  for (const t of turns) end = Math.max(end, (t.speech_end_ms || 0) + (t.response_ms || 0) + 500);
  for (const a of actions) end = Math.max(end, a.at_ms + 500);
  end = Math.max(end, 1000);
  const x = (v) => left + (v / end) * (W - left - 10);
  const s = svg('svg', { id: 'timeline', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Turns of the call on a timeline' });
  lanes.forEach((name, i) => {
    s.append(svg('text', { x: 8, y: top + i * lane + 16 }, name));
    s.append(svg('line', { class: 'axis', x1: left, x2: W - 10, y1: top + (i + 1) * lane, y2: top + (i + 1) * lane }));
  });
  const ticks = 8;
  for (let k = 0; k <= ticks; k++) {
    const v = (end * k) / ticks;
    s.append(svg('text', { x: Math.min(x(v) - 10, W - 40), y: H - 8 }, (v / 1000).toFixed(1) + ' s'));
  }
  const bar = (cls, laneIx, from, to, title) => {
    const r = svg('rect', { class: cls, x: x(from), y: top + laneIx * lane + 5, width: Math.max(2, x(to) - x(from)), height: lane - 10 });
    r.append(svg('title', {}, title));
    s.append(r);
  };
  for (const t of turns) {
    const label = t.greeting ? 'greeting' : 'turn ' + t.index;
    if (t.speech_onset_ms !== null && t.speech_onset_ms !== undefined && t.speech_end_ms !== null && t.speech_end_ms !== undefined) {
      bar('caller turn-speech', 0, t.speech_onset_ms, t.speech_end_ms, label + ': caller speech');
    }
    const start = t.greeting ? 0 : t.speech_end_ms;
    if (start === null || start === undefined) continue;
    let at = start;
    if (t.asr_ms) { bar('asr', 1, at, at + t.asr_ms, label + ': recognition ' + ms(t.asr_ms)); at += t.asr_ms; }
    if (t.llm_first_token_ms) { bar('llm', 2, at, at + t.llm_first_token_ms, label + ': first token ' + ms(t.llm_first_token_ms)); at += t.llm_first_token_ms; }
    if (t.tts_first_audio_ms) bar('tts', 3, at, at + t.tts_first_audio_ms, label + ': first audio ' + ms(t.tts_first_audio_ms));
    if (t.response_ms !== null && t.response_ms !== undefined) {
      const fx = x(start + t.response_ms);
      const line = svg('line', { class: 'first-audio', x1: fx, x2: fx, y1: top, y2: top + 4 * lane });
      line.append(svg('title', {}, label + ': agent audio after ' + ms(t.response_ms)));
      s.append(line);
      if (t.interrupted) {
        const b = svg('line', { class: 'barge-in', x1: fx + 3, x2: fx + 3, y1: top, y2: top + lane });
        b.append(svg('title', {}, label + ': the caller barged in'));
        s.append(b);
      }
    }
  }
  for (const a of actions) {
    const c = svg('circle', { class: 'action', cx: x(a.at_ms), cy: top + 4 * lane + lane / 2, r: 6 });
    c.append(svg('title', {}, `${a.action} (${a.source}) ${a.result}`));
    s.append(c);
  }
  return s;
}

// Latency: P50/P95 over time and a histogram, per transport or agent.
async function latencyPage(view) {
  const range = el('select', { id: 'latency-range' }, el('option', { value: '3600000' }, 'last hour'), el('option', { value: '86400000', selected: '' }, 'last 24 hours'), el('option', { value: '604800000' }, 'last 7 days'));
  const by = el('select', { id: 'latency-by' }, el('option', { value: 'transport' }, 'per transport'), el('option', { value: 'agent' }, 'per agent'));
  const out = el('div', { id: 'latency-charts' });
  async function draw() {
    const now = Date.now();
    const data = await api(`/console/api/latency?from=${now - Number(range.value)}&to=${now + 1}`);
    out.replaceChildren();
    const groups = {};
    for (const p of data.points) (groups[p[by.value] || '–'] ||= []).push(p);
    const names = Object.keys(groups).sort();
    if (!names.length) {
      out.append(el('p', { class: 'muted' }, 'No answered turns in this range.'));
      return;
    }
    out.append(table(['Group', 'Turns', 'P50', 'P95'], names.map((n) => {
      const v = groups[n].map((p) => p.response_ms).sort((a, b) => a - b);
      return el('tr', {}, el('td', {}, n), el('td', { class: 'num' }, v.length), el('td', { class: 'num' }, ms(pct(v, 50))), el('td', { class: 'num' }, ms(pct(v, 95))));
    })));
    for (const n of names) {
      out.append(el('h3', {}, n), overTime(groups[n], now - Number(range.value), now), histogram(groups[n]));
    }
    if (data.truncated) out.append(el('p', { class: 'muted' }, 'Only the oldest points of this range are drawn.'));
  }
  range.addEventListener('change', draw);
  by.addEventListener('change', draw);
  view.append(el('h2', {}, 'Response latency'), el('p', { class: 'muted' }, "Caller's end of speech to the agent's first audio, from the call records."), el('div', { class: 'filters' }, range, by), out);
  await draw();
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function overTime(points, from, to) {
  const W = 960, H = 220, left = 50, bins = 24;
  const s = svg('svg', { class: 'latency-over-time', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'P50 and P95 over time' });
  const width = (to - from) / bins;
  const series = [];
  for (let b = 0; b < bins; b++) {
    const v = points.filter((p) => p.at_ms >= from + b * width && p.at_ms < from + (b + 1) * width).map((p) => p.response_ms).sort((a, c) => a - c);
    if (v.length) series.push([b, pct(v, 50), pct(v, 95)]);
  }
  const max = Math.max(500, ...series.map((r) => r[2])) * 1.1;
  const x = (b) => left + ((b + 0.5) / bins) * (W - left - 10);
  const y = (v) => H - 25 - (v / max) * (H - 40);
  for (const v of [0, max / 2, max]) {
    s.append(svg('line', { class: 'axis', x1: left, x2: W - 10, y1: y(v), y2: y(v) }));
    s.append(svg('text', { x: 4, y: y(v) + 4 }, Math.round(v) + ' ms'));
  }
  s.append(svg('text', { x: left, y: H - 6 }, new Date(from).toLocaleString()));
  s.append(svg('text', { x: W - 150, y: H - 6 }, new Date(to).toLocaleString()));
  for (const [k, cls] of [[1, 'p50'], [2, 'p95']]) {
    if (!series.length) continue;
    s.append(svg('polyline', { class: cls, points: series.map((r) => `${x(r[0])},${y(r[k])}`).join(' ') }));
    for (const r of series) {
      const dot = svg('circle', { class: cls + '-dot', cx: x(r[0]), cy: y(r[k]), r: 3 });
      dot.append(svg('title', {}, `${cls.toUpperCase()} ${ms(r[k])}`));
      s.append(dot);
    }
  }
  s.append(svg('text', { x: W - 120, y: 16, class: 'legend' }, 'P50 solid, P95 dashed'));
  return s;
}

function histogram(points) {
  const W = 960, H = 180, left = 50, step = 100;
  const v = points.map((p) => p.response_ms);
  const n = Math.min(40, Math.max(5, Math.ceil(Math.max(...v) / step) + 1));
  const counts = new Array(n).fill(0);
  for (const r of v) counts[Math.min(n - 1, Math.floor(r / step))]++;
  const max = Math.max(...counts);
  const s = svg('svg', { class: 'latency-histogram', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Histogram of response latency' });
  const bw = (W - left - 10) / n;
  counts.forEach((c, i) => {
    const h = (c / max) * (H - 40);
    const r = svg('rect', { class: 'bar', x: left + i * bw + 1, y: H - 25 - h, width: bw - 2, height: h });
    r.append(svg('title', {}, `${i * step}–${(i + 1) * step} ms: ${c}`));
    s.append(r);
    if (i % 5 === 0) s.append(svg('text', { x: left + i * bw, y: H - 8 }, i * step + ' ms'));
  });
  s.append(svg('text', { x: 4, y: 18 }, max + ' turns'));
  return s;
}

// Agents, dialplan, models, readiness.
async function agentsPage(view) {
  const d = await api('/console/api/agents');
  view.append(el('h2', {}, 'Agents and dialplan'),
    el('p', {}, `Ready: ${d.ready ? 'yes' : 'no'}${d.draining ? ' (draining)' : ''} · models profile ${d.profile} · records ${d.records ? 'on' : 'off'} · dialplan ${d.dialplan || 'from the configuration'} · default agent ${d.default_agent}${d.echo ? ' · echo agent' : ''}`),
    el('h3', {}, 'Rules (first match wins)'),
    d.rules.length ? table(['Rule', 'Agent', 'Line'], d.rules.map((r) => el('tr', {}, el('td', {}, r.name), el('td', {}, r.agent), el('td', { class: 'num' }, r.line)))) : el('p', { class: 'muted' }, 'Every call goes to the default agent.'),
    el('h3', {}, 'Agents'),
    table(['Agent', 'Language', 'Voice', 'Phonemes', 'Model', 'Recogniser', 'Synthesis', 'Tools', 'Actions'], d.agents.map((a) => el('tr', { 'data-agent': a.name },
      el('td', {}, a.name + (a.default ? ' (default)' : '')), el('td', {}, a.language), el('td', {}, a.voice || 'profile voice'), el('td', {}, a.phonemes || '–'),
      el('td', {}, a.llm), el('td', {}, a.asr), el('td', {}, a.tts), el('td', {}, a.tools.join(', ') || '–'), el('td', {}, a.actions.join(', ') || '–')))),
    el('h3', {}, 'Model files'),
    table(['Model', 'Role', 'File', 'Language', 'State'], d.models.map((m) => el('tr', {},
      el('td', {}, m.id), el('td', {}, m.role), el('td', {}, m.file), el('td', {}, m.language || '–'),
      el('td', {}, el('span', { class: m.state === 'verified' ? 'pill' : 'pill bad' }, m.state))))));
}

// Talk to an agent from the browser.
async function talkPage(view) {
  const d = await api('/console/api/agents');
  const agent = el('select', { id: 'talk-agent' }, ...d.agents.map((a) => el('option', { value: a.name, selected: a.default ? '' : null }, `${a.name} (${a.language})`)));
  const status = el('p', { id: 'talk-status', class: 'muted' }, 'Not in a call.');
  const call = el('button', { id: 'talk-call', class: 'primary', type: 'button' }, 'Call');
  const hang = el('button', { id: 'talk-hangup', class: 'danger', type: 'button', disabled: '' }, 'Hang up');
  const keypad = el('div', { class: 'keypad' }, ...'123456789*0#'.split('').map((k) => el('button', { type: 'button', onclick: () => talk && talk.key(k) }, k)));
  call.addEventListener('click', async () => {
    call.disabled = true;
    try {
      talk = await startTalk(agent.value, status, () => { call.disabled = false; hang.disabled = true; });
      hang.disabled = false;
    } catch (e) {
      status.textContent = 'Cannot call: ' + e.message;
      call.disabled = false;
    }
  });
  hang.addEventListener('click', () => talk && talk.hangUp());
  view.append(el('h2', {}, 'Talk to an agent'),
    el('p', { class: 'muted' }, 'Your microphone goes to the agent as a call of its own (transport "browser"), recorded like any other. Microphone access needs this page on localhost or over HTTPS.'),
    el('div', { class: 'filters' }, el('label', {}, 'Agent ', agent), call, hang), keypad, status);
}

async function startTalk(agentName, status, ended) {
  const ctx = new AudioContext({ sampleRate: 16000 });
  let mic;
  try {
    await ctx.audioWorklet.addModule('/console/worklet.js');
    mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
  } catch (e) {
    ctx.close();
    throw e;
  }
  const source = ctx.createMediaStreamSource(mic);
  const capture = new AudioWorkletNode(ctx, 'izwi-capture');
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(capture).connect(mute).connect(ctx.destination);
  const player = new AudioWorkletNode(ctx, 'izwi-player', { outputChannelCount: [1] });
  player.connect(ctx.destination);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/console/talk?agent=${encodeURIComponent(agentName)}`);
  ws.binaryType = 'arraybuffer';
  const received = [];
  const state = { id: null, ended: false, reason: null, clears: 0 };
  capture.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      const m = JSON.parse(e.data);
      if (m.event === 'start') { state.id = m.call; status.textContent = `In a call with ${m.agent} (${m.call}).`; }
      if (m.event === 'clear') { state.clears++; player.port.postMessage('clear'); }
      if (m.event === 'end') state.reason = m.reason;
      return;
    }
    // The last minute of what the agent said, for checks from outside.
    received.push(new Int16Array(e.data.slice(0)));
    if (received.length > 3000) received.shift();
    player.port.postMessage(e.data, [e.data]);
  };
  const finish = () => {
    if (state.ended) return;
    state.ended = true;
    mic.getTracks().forEach((t) => t.stop());
    ctx.close();
    status.textContent = 'Call ended' + (state.reason ? ` (${state.reason})` : '') + '.';
    ended();
  };
  ws.onclose = finish;
  ws.onerror = () => { status.textContent = 'The call failed.'; };
  try {
    await new Promise((resolve, reject) => {
      ws.addEventListener('open', resolve, { once: true });
      ws.addEventListener('close', () => reject(new Error('refused')), { once: true });
    });
  } catch (e) {
    finish();
    throw e;
  }
  return {
    state,
    key: (k) => ws.send(JSON.stringify({ event: 'dtmf', digit: k })),
    hangUp: () => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ event: 'hangup' })); ws.close(1000); },
    // What the agent said, as 16 kHz PCM in base64 (for checks from outside).
    receivedBase64: () => {
      const all = new Int16Array(received.reduce((n, r) => n + r.length, 0));
      let at = 0;
      for (const r of received) { all.set(r, at); at += r.length; }
      const bytes = new Uint8Array(all.buffer);
      let bin = '';
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      return btoa(bin);
    },
  };
}

// For checks from outside the page (the tests' WebDriver).
window.izwiConsole = { talk: () => talk };

document.addEventListener('DOMContentLoaded', async () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    const r = await fetch('/console/api/me', { credentials: 'same-origin' });
    if (r.ok) signedIn(await r.json());
    else showSignIn('');
  } catch (e) {
    showSignIn(String(e));
  }
});
