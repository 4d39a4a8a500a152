// voxgate console: plain JavaScript, no framework, no build step. Talks only to the /v1/ API
// of the gateway that served it; the session cookie set at login authenticates every call,
// writes also send the X-Requested-With header the API asks of cookie sessions.
'use strict';

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const WRITE_HEADERS = { 'X-Requested-With': 'voxgate-console' };

  // Builds an element; children are nodes or text (never parsed as HTML).
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, opts = {}) {
    const resp = await fetch(path, {
      credentials: 'same-origin',
      ...opts,
      headers: { ...WRITE_HEADERS, ...(opts.headers || {}) },
    });
    if (resp.status === 401) {
      // The session ended (expired, signed out elsewhere, gateway restarted): back to login.
      location.reload();
      throw new ApiError(401, 'signed out');
    }
    return resp;
  }

  async function apiJson(path) {
    const resp = await api(path);
    if (!resp.ok) {
      let msg = resp.statusText;
      try { msg = (await resp.json()).message || msg; } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, msg);
    }
    return resp.json();
  }

  const fmtTime = (s) => (s ? new Date(s).toLocaleString() : '');
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
    const total = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
  }
  const fmtOffset = (sec) => `${Math.floor(sec / 60)}:${(sec % 60).toFixed(1).padStart(4, '0')}`;

  // ---------------------------------------------------------------------------------------
  // Tabs and routing: #calls, #recordings[/<id>], #records[/<call id>], #trunks
  // ---------------------------------------------------------------------------------------
  const TABS = ['calls', 'recordings', 'records', 'trunks'];

  function route() {
    const raw = location.hash.replace(/^#/, '');
    const slash = raw.indexOf('/');
    let tab = slash < 0 ? raw : raw.slice(0, slash);
    const arg = slash < 0 ? '' : decodeURIComponent(raw.slice(slash + 1));
    if (!TABS.includes(tab)) tab = 'calls';
    for (const t of TABS) {
      $(`#tab-${t}`).hidden = t !== tab;
      document.querySelector(`nav a[data-tab="${t}"]`).classList.toggle('active', t === tab);
    }
    if (tab === 'recordings') {
      if (!recordings.loaded) loadRecordings(false);
      if (arg) openRecording(arg);
    } else if (tab === 'records') {
      if (arg) $('#records-call').value = arg;
      loadRecords();
    } else if (tab === 'trunks') {
      loadTrunks();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Live calls (server-sent events)
  // ---------------------------------------------------------------------------------------
  let calls = [];
  const armed = new Map(); // call id -> timer of a pending "confirm hang-up"

  function startStream() {
    const badge = $('#sse-status');
    const es = new EventSource('/v1/calls/stream');
    es.addEventListener('open', () => {
      badge.textContent = 'live';
      badge.className = 'badge live';
    });
    es.addEventListener('calls', (ev) => {
      try {
        calls = JSON.parse(ev.data).calls || [];
      } catch (_) {
        return;
      }
      renderCalls();
    });
    es.addEventListener('error', async () => {
      badge.textContent = 'reconnecting…';
      badge.className = 'badge down';
      if (es.readyState === EventSource.CLOSED) {
        // EventSource gives up on an HTTP error (401 after the session ended): check, retry.
        try { await api('/v1/calls'); } catch (_) { return; }
        setTimeout(startStream, 2000);
      }
    });
  }

  async function callAction(id, action) {
    const err = $('#calls-error');
    err.hidden = true;
    try {
      const resp = await api(`/v1/calls/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
      if (!resp.ok) throw new ApiError(resp.status, (await resp.json()).message);
    } catch (e) {
      if (e.status === 401) return;
      err.textContent = `${action} failed: ${e.message}`;
      err.hidden = false;
    }
  }

  function hangupButton(id) {
    const btn = el('button', { type: 'button', class: 'danger hangup', text: armed.has(id) ? 'Confirm hang-up' : 'Hang up' });
    btn.addEventListener('click', () => {
      if (armed.has(id)) {
        clearTimeout(armed.get(id));
        armed.delete(id);
        callAction(id, 'hangup');
      } else {
        armed.set(id, setTimeout(() => { armed.delete(id); renderCalls(); }, 4000));
      }
      renderCalls();
    });
    return btn;
  }

  function renderCalls() {
    const tbody = $('#calls-table tbody');
    tbody.replaceChildren(...calls.map((c) => el('tr', { dataset: { callId: c.call_id } },
      el('td', { class: 'mono', text: c.call_id }),
      el('td', { text: c.from }),
      el('td', { text: c.to }),
      el('td', { class: 'state', text: c.state }),
      el('td', { class: 'duration', dataset: { since: c.answered_at || c.started_at } }),
      el('td', { class: 'paused', text: c.paused ? 'yes' : 'no' }),
      el('td', {}, c.recording_id
        ? el('a', { href: `#recordings/${encodeURIComponent(c.recording_id)}`, class: 'mono', text: c.recording_id })
        : '—'),
      el('td', { class: 'actions' },
        el('button', {
          type: 'button',
          class: c.paused ? 'resume' : 'pause',
          text: c.paused ? 'Resume bot' : 'Pause bot',
          onclick: () => callAction(c.call_id, c.paused ? 'resume' : 'pause'),
        }),
        ' ',
        hangupButton(c.call_id)),
    )));
    $('#calls-empty').hidden = calls.length > 0;
    tickDurations();
  }

  function tickDurations() {
    const now = Date.now();
    for (const td of document.querySelectorAll('#calls-table td.duration')) {
      td.textContent = fmtDuration(now - Date.parse(td.dataset.since));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Recordings: searchable list, player, two-lane waveform with transcript markers
  // ---------------------------------------------------------------------------------------
  const recordings = { loaded: false, cursor: null, items: [] };
  const view = { meta: null, peaks: null, entries: [], duration: 0 };

  async function loadRecordings(more) {
    recordings.loaded = true;
    const q = $('#rec-search').value.trim();
    const params = new URLSearchParams({ limit: '50' });
    if (q) params.set('q', q);
    if (more && recordings.cursor) params.set('cursor', recordings.cursor);
    let page;
    try {
      page = await apiJson(`/v1/recordings?${params}`);
    } catch (e) {
      $('#rec-empty').textContent = `Could not list recordings: ${e.message}`;
      $('#rec-empty').hidden = false;
      return;
    }
    recordings.items = more ? recordings.items.concat(page.recordings) : page.recordings;
    recordings.cursor = page.next_cursor;
    const selected = view.meta && view.meta.id;
    $('#rec-table tbody').replaceChildren(...recordings.items.map((r) => el('tr', {
      class: `selectable${r.id === selected ? ' selected' : ''}`,
      dataset: { id: r.id, callId: r.call_id, status: r.status },
      title: r.call_id,
      onclick: () => { location.hash = `#recordings/${encodeURIComponent(r.id)}`; },
    },
    el('td', { text: fmtTime(r.started_at) }),
    el('td', { text: r.from }),
    el('td', { text: r.to }),
    el('td', { text: fmtDuration(r.duration_ms) }),
    el('td', { class: 'status', text: r.status }))));
    $('#rec-more').hidden = !recordings.cursor;
    $('#rec-empty').textContent = 'No recordings match.';
    $('#rec-empty').hidden = recordings.items.length > 0;
  }

  async function openRecording(id) {
    const detail = $('#rec-detail');
    const canvas = $('#waveform');
    canvas.dataset.state = 'loading';
    let meta;
    try {
      meta = await apiJson(`/v1/recordings/${encodeURIComponent(id)}`);
    } catch (e) {
      detail.hidden = false;
      $('#rec-title').textContent = `Recording ${id}`;
      $('#rec-meta').textContent = e.message;
      return;
    }
    view.meta = meta;
    view.peaks = null;
    view.entries = [];
    view.duration = meta.duration_ms / 1000;
    for (const tr of document.querySelectorAll('#rec-table tbody tr')) {
      tr.classList.toggle('selected', tr.dataset.id === id);
    }
    detail.hidden = false;
    $('#rec-title').textContent = `${meta.from || '?'} → ${meta.to || '?'}`;
    $('#rec-meta').replaceChildren(
      `${fmtTime(meta.started_at)} · ${fmtDuration(meta.duration_ms)} · ${meta.status} · `,
      `${meta.channels === 2 ? 'stereo (caller left, bot right)' : 'mono'} · call `,
      el('span', { class: 'mono', text: meta.call_id }),
      ' · id ',
      el('span', { class: 'mono', text: meta.id }),
    );
    const audioUrl = `/v1/recordings/${encodeURIComponent(meta.id)}/audio`;
    const player = $('#player');
    if (player.dataset.id !== meta.id) {
      player.src = audioUrl;
      player.dataset.id = meta.id;
    }
    $('#rec-download').href = audioUrl;
    $('#rec-records-link').href = `#records/${encodeURIComponent(meta.call_id)}`;

    const finished = meta.status === 'complete' || meta.status === 'recovered';
    const [peaks, transcript] = await Promise.all([
      finished ? loadPeaks(meta.id) : Promise.resolve(null),
      loadTranscript(meta.call_id),
    ]);
    if (view.meta !== meta) return; // another recording was opened meanwhile
    view.peaks = peaks;
    if (peaks && peaks.sample_rate) view.duration = peaks.frames / peaks.sample_rate;
    $('#wave-note').textContent = finished
      ? (peaks ? '' : 'The waveform could not be computed.')
      : 'The waveform is drawn once the recording is finished.';
    const start = Date.parse(meta.started_at);
    view.entries = (transcript || []).map((e) => ({ ...e, sec: (Date.parse(e.at) - start) / 1000 }));
    renderTranscript(transcript);
    draw();
  }

  async function loadPeaks(id) {
    const width = Math.max(100, Math.min(4000, Math.round($('#waveform').clientWidth || 900)));
    try {
      return await apiJson(`/v1/recordings/${encodeURIComponent(id)}/peaks?buckets=${width}`);
    } catch (_) {
      return null;
    }
  }

  async function loadTranscript(callId) {
    try {
      const t = await apiJson(`/v1/calls/${encodeURIComponent(callId)}/transcript`);
      return t.entries || [];
    } catch (e) {
      return e.status === 404 ? null : [];
    }
  }

  function kindClass(kind) {
    if (kind === 'dtmf') return 'dtmf';
    if (kind === 'prompt' || kind === 'say') return 'prompt';
    if (kind === 'speech') return 'speech';
    if (kind === 'transfer') return 'transfer';
    if (kind === 'step') return 'step';
    return 'other';
  }

  // One readable line per transcript entry (docs/records.md): who did what.
  function entryText(e) {
    const text = e.text === undefined || e.text === null ? '' : String(e.text);
    switch (e.kind) {
      case 'prompt': return `Bot played ${e.file || text}`;
      case 'say': return `Bot said: ${text}`;
      case 'dtmf': return `Caller pressed ${e.digit || text}`;
      case 'speech': {
        const how = [e.confidence !== undefined ? `confidence ${e.confidence}` : null,
          e.matched === false ? 'no match' : null].filter(Boolean).join(', ');
        return `Caller said: ${text}${how ? ` (${how})` : ''}`;
      }
      case 'step': {
        const name = e.step || text.split(':')[0];
        const outcome = e.outcome || text.slice(name.length + 1).trim();
        return `Step ${name}: ${outcome}${e.dialog ? ` (dialog ${e.dialog})` : ''}`;
      }
      case 'transfer':
        return e.to !== undefined && e.outcome !== undefined ? `Transfer to ${e.to}: ${e.outcome}` : `Transfer: ${text}`;
      case 'recording':
        return e.id !== undefined && e.event !== undefined ? `Recording ${e.id} ${e.event}` : `Recording: ${text}`;
      case 'call': return `Call ${text}`;
      default: return `${e.kind}: ${text}`;
    }
  }

  // A step that failed, a transfer that failed: shown in bold.
  function entryFailed(e) {
    const outcome = String(e.outcome || '');
    return (e.kind === 'step' && outcome !== '' && outcome !== 'ok')
      || (e.kind === 'transfer' && outcome.startsWith('failed'));
  }

  function renderTranscript(entries) {
    const list = $('#transcript');
    if (entries === null) {
      list.replaceChildren();
      $('#transcript-note').textContent = 'No transcript for this call.';
      return;
    }
    $('#transcript-note').textContent = entries.length ? '' : 'The transcript is empty.';
    list.replaceChildren(...view.entries.map((e) => el('li', {
      class: `k-${kindClass(e.kind)}${entryFailed(e) ? ' failed' : ''}`,
      dataset: { kind: e.kind, sec: String(e.sec) },
      onclick: () => seek(e.sec),
    }, el('span', { class: 't', text: e.sec >= 0 ? fmtOffset(e.sec) : 'before' }), entryText(e))));
  }

  function seek(sec) {
    const player = $('#player');
    if (sec >= 0 && Number.isFinite(sec)) {
      player.currentTime = Math.min(sec, view.duration || sec);
    }
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
  }

  // Two lanes (caller on top, bot below) of peak bars, the transcript's events as coloured
  // lines across both lanes, and the play head.
  function draw() {
    const canvas = $('#waveform');
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 900;
    const cssH = canvas.clientHeight || 180;
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    const peaks = view.peaks && view.peaks.peaks;
    const lanes = peaks ? peaks.length : (view.meta && view.meta.channels) || 2;
    const names = lanes === 2 ? ['caller', 'bot'] : ['mixed'];
    const colors = lanes === 2 ? [cssVar('--caller'), cssVar('--bot')] : [cssVar('--caller')];
    const laneH = cssH / lanes;
    for (let l = 0; l < lanes; l += 1) {
      const mid = laneH * l + laneH / 2;
      g.strokeStyle = '#e3e7ee';
      g.beginPath();
      g.moveTo(0, mid);
      g.lineTo(cssW, mid);
      g.stroke();
      if (peaks && peaks[l]) {
        const p = peaks[l];
        g.fillStyle = colors[l] || colors[0];
        const step = cssW / p.length;
        for (let i = 0; i < p.length; i += 1) {
          const h = Math.max(0.5, (p[i] / 1000) * (laneH / 2 - 4));
          g.fillRect(i * step, mid - h, Math.max(1, step - 0.2), h * 2);
        }
      }
      g.fillStyle = '#555';
      g.font = '11px system-ui, sans-serif';
      g.fillText(names[l] || `ch${l + 1}`, 4, laneH * l + 12);
    }
    let markers = 0;
    const dur = view.duration;
    if (dur > 0) {
      g.font = '10px system-ui, sans-serif';
      // The audio is written in 20 ms slots, so the events that close the call (the hang-up,
      // the recording's stop) land a few milliseconds after its last sample: anything within
      // half a second of the end is marked at the end.
      const slack = 0.5;
      for (const e of view.entries) {
        if (!(e.sec >= 0 && e.sec <= dur + slack)) continue;
        const x = (Math.min(e.sec, dur) / dur) * cssW;
        g.strokeStyle = cssVar(`--${kindClass(e.kind)}`);
        g.lineWidth = e.kind === 'dtmf' ? 2 : 1;
        g.beginPath();
        g.moveTo(x, 0);
        g.lineTo(x, cssH);
        g.stroke();
        g.fillStyle = g.strokeStyle;
        // Keys show their digit, the rest a letter: P(rompt), S(ay), R(ecognised speech),
        // T(ransfer), I(ntegration step), C(all), then the recording's own events.
        const letters = { prompt: 'P', say: 'S', speech: 'R', transfer: 'T', step: 'I', call: 'C', recording: '●' };
        const label = e.kind === 'dtmf' ? String(e.digit || e.text) : (letters[e.kind] || e.kind.slice(0, 1).toUpperCase());
        g.fillText(label, x + 2, cssH - 3);
        markers += 1;
      }
      g.lineWidth = 1;
      const t = $('#player').currentTime || 0;
      const x = Math.min(cssW, (t / dur) * cssW);
      g.strokeStyle = '#d62828';
      g.beginPath();
      g.moveTo(x, 0);
      g.lineTo(x, cssH);
      g.stroke();
    }
    canvas.dataset.state = peaks ? 'drawn' : 'empty';
    canvas.dataset.markers = String(markers);
    canvas.dataset.lanes = String(lanes);
  }

  // ---------------------------------------------------------------------------------------
  // CDRs and tracked events
  // ---------------------------------------------------------------------------------------
  function jsonCell(v) {
    return el('td', {}, el('details', {}, el('summary', { text: 'JSON' }), el('pre', { class: 'json', text: JSON.stringify(v, null, 2) })));
  }

  async function loadRecords() {
    const call = $('#records-call').value.trim();
    const name = $('#events-name').value.trim();
    const cdrParams = new URLSearchParams({ limit: '200' });
    const evParams = new URLSearchParams({ limit: '200' });
    if (call) { cdrParams.set('call_id', call); evParams.set('call_id', call); }
    if (name) evParams.set('name', name);
    const callLink = (id) => el('a', { href: `#records/${encodeURIComponent(id || '')}`, class: 'mono', text: id || '' });
    try {
      const { cdrs } = await apiJson(`/v1/cdrs?${cdrParams}`);
      $('#cdr-table tbody').replaceChildren(...cdrs.map((c) => el('tr', { dataset: { callId: c.call_id } },
        el('td', { text: fmtTime(c.start) }),
        el('td', {}, callLink(c.call_id)),
        el('td', { text: c.from }),
        el('td', { text: c.to }),
        el('td', { text: fmtDuration(c.duration_ms) }),
        el('td', { class: 'end-reason', text: c.end_reason }),
        el('td', {}, ...(c.recording_ids || []).map((r) => el('div', {}, el('a', { href: `#recordings/${encodeURIComponent(r)}`, class: 'mono', text: r })))),
        jsonCell(c))));
    } catch (e) {
      $('#cdr-table tbody').replaceChildren(el('tr', {}, el('td', { colspan: '8', class: 'error', text: e.message })));
    }
    try {
      const { events } = await apiJson(`/v1/events?${evParams}`);
      $('#events-table tbody').replaceChildren(...events.map((e) => el('tr', { dataset: { callId: e.call_id || '', name: e.name || '' } },
        el('td', { text: fmtTime(e.ts) }),
        el('td', {}, callLink(e.call_id)),
        el('td', { text: e.name }),
        jsonCell(e.properties))));
    } catch (e) {
      $('#events-table tbody').replaceChildren(el('tr', {}, el('td', { colspan: '4', class: 'error', text: e.message })));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Trunks
  // ---------------------------------------------------------------------------------------
  async function loadTrunks() {
    let trunks = [];
    try {
      trunks = (await apiJson('/v1/trunks')).trunks;
    } catch (e) {
      $('#trunks-empty').textContent = e.message;
      $('#trunks-empty').hidden = false;
      return;
    }
    $('#trunks-table tbody').replaceChildren(...trunks.map((t) => el('tr', { dataset: { name: t.name } },
      el('td', { text: t.name }),
      el('td', { class: 'mono', text: t.registrar }),
      el('td', { text: t.username }),
      el('td', { text: t.registered ? 'yes' : `no (${t.state})` }),
      el('td', { text: fmtTime(t.expires_at) }),
      el('td', { class: 'error', text: t.last_error || '' }))));
    $('#trunks-empty').hidden = trunks.length > 0;
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------
  function init() {
    $('#rec-search-form').addEventListener('submit', (ev) => { ev.preventDefault(); loadRecordings(false); });
    $('#rec-more').addEventListener('click', () => loadRecordings(true));
    $('#records-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const call = $('#records-call').value.trim();
      const target = `#records${call ? `/${encodeURIComponent(call)}` : ''}`;
      if (location.hash === target) loadRecords(); else location.hash = target;
    });
    const player = $('#player');
    for (const evName of ['timeupdate', 'seeked', 'ended']) player.addEventListener(evName, draw);
    $('#waveform').addEventListener('click', (ev) => {
      const rect = ev.currentTarget.getBoundingClientRect();
      if (view.duration > 0) seek(((ev.clientX - rect.left) / rect.width) * view.duration);
    });
    window.addEventListener('resize', () => { if (view.meta) draw(); });
    window.addEventListener('hashchange', route);
    setInterval(tickDurations, 1000);
    setInterval(() => { if (!$('#tab-trunks').hidden) loadTrunks(); }, 5000);
    startStream();
    route();
  }

  init();
})();
