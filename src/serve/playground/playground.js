// The emlens steering playground: plain browser JavaScript, no dependencies, no requests beyond this server.
// Every API call sends the key typed in (kept in sessionStorage, so it lasts as long as the tab); model answers
// are shown with textContent only, never as markup.

const $ = (id) => document.getElementById(id);
const KEY_STORE = 'emlens.playground.key';
const state = { model: null, directions: [], busy: false };

function authHeaders() {
  const h = { 'Content-Type': 'application/json' };
  const key = $('key').value.trim();
  if (key !== '') h.Authorization = `Bearer ${key}`;
  return h;
}

/** A fetch of this server's API; an error answer throws its message (the server's own sentence). */
async function api(path, body) {
  let r;
  try {
    r = await fetch(
      path,
      body === undefined
        ? { headers: authHeaders() }
        : { method: 'POST', headers: authHeaders(), body: JSON.stringify(body) },
    );
  } catch (e) {
    throw new Error(`Cannot reach the server (${e.message}); check that emlens serve is still running.`);
  }
  if (!r.ok) {
    let message = `The server answered ${r.status} ${r.statusText}.`;
    try {
      const j = await r.json();
      if (j?.error?.message) message = j.error.message;
    } catch {
      // not JSON: keep the status line
    }
    throw new Error(message);
  }
  return r;
}

function showError(message) {
  const p = document.createElement('p');
  p.textContent = message;
  $('errors').replaceChildren(p);
  $('errors').hidden = false;
}

function clearError() {
  $('errors').hidden = true;
  $('errors').replaceChildren();
}

function setStatus(text) {
  $('status').textContent = text;
}

function currentDirection() {
  const id = $('direction').value;
  return state.directions.find((d) => d.id === id) ?? null;
}

async function connect() {
  clearError();
  sessionStorage.setItem(KEY_STORE, $('key').value);
  try {
    const models = await (await api('/v1/models')).json();
    state.model = models.data[0].id;
    const dirs = await (await api('/v1/emlens/directions')).json();
    state.directions = dirs.data;
    const select = $('direction');
    const keep = select.value;
    const none = document.createElement('option');
    none.value = '';
    none.textContent = '(none: no steering)';
    select.replaceChildren(none);
    for (const d of state.directions) {
      const o = document.createElement('option');
      o.value = d.id;
      const ls = d.layers;
      o.textContent = `${d.id} (layers ${ls.length > 1 ? `${ls[0]}-${ls[ls.length - 1]}` : ls[0]})`;
      select.append(o);
    }
    if (state.directions.some((d) => d.id === keep)) select.value = keep;
    else if (state.directions.length > 0) select.value = state.directions[0].id;
    directionChanged();
    setStatus(`Connected to ${state.model}: ${state.directions.length} direction file(s).`);
  } catch (e) {
    state.model = null;
    setStatus('Not connected.');
    showError(e.message);
  }
}

function directionChanged() {
  const d = currentDirection();
  const info = $('direction-info');
  const mon = $('monitor-layer');
  mon.replaceChildren();
  if (!d) {
    info.textContent = 'No direction: both answers are the plain model.';
    return;
  }
  const norms = d.layers.map((l, i) => `${l}: ${d.norms[i].toFixed(2)}`).join(', ');
  info.textContent = `${d.method}; norm per layer ${norms}`;
  for (const l of d.layers) {
    const o = document.createElement('option');
    o.value = String(l);
    o.textContent = `layer ${l}`;
    mon.append(o);
  }
  mon.value = String(d.layers[d.layers.length - 1]);
  const from = $('layer-from');
  const to = $('layer-to');
  if (!d.layers.includes(Number(from.value))) from.value = String(d.layers[d.layers.length - 1]);
  if (!d.layers.includes(Number(to.value))) to.value = String(d.layers[d.layers.length - 1]);
}

function layerModeChanged() {
  const mode = $('layer-mode').value;
  $('layer-from').disabled = mode === 'all';
  $('layer-to').hidden = mode !== 'range';
  $('layer-to-label').hidden = mode !== 'range';
}

function chosenLayers(d) {
  const mode = $('layer-mode').value;
  if (mode === 'all') return d.layers;
  const from = Number($('layer-from').value);
  if (mode === 'one') return [from];
  const to = Number($('layer-to').value);
  const out = [];
  for (let l = Math.min(from, to); l <= Math.max(from, to); l++) out.push(l);
  return out;
}

function numberField(id, what) {
  const v = Number($(id).value);
  if ($(id).value.trim() === '' || !Number.isFinite(v)) throw new Error(`${what} is not a number; type one.`);
  return v;
}

/** A chat completions body; `intervene` null gives the baseline, else `{ scale, mode }`. */
function chatBody(prompt, intervene, stream) {
  if (state.model === null)
    throw new Error('Not connected to the server; press Connect (with the API key if it has one).');
  const body = {
    model: state.model,
    messages: [{ role: 'user', content: prompt }],
    max_tokens: numberField('max-tokens', 'Max tokens'),
    temperature: numberField('temperature', 'Temperature'),
    seed: numberField('seed', 'The seed'),
    stream,
  };
  const d = currentDirection();
  if (d === null) return body;
  const ext = { monitor: { direction: d.id, layers: [Number($('monitor-layer').value)] } };
  if (intervene !== null) {
    const layers = chosenLayers(d);
    if (intervene.mode === 'steer') {
      ext.steer = [{ direction: d.id, layers, scale: intervene.scale, unit: $('unit').checked }];
    } else {
      ext.ablate = [{ direction: d.id, layers }];
    }
    ext.positions = $('positions').value;
  }
  body.emlens = ext;
  return body;
}

/** Streams one answer into `view`: text deltas, and the monitored projection of each token. */
async function streamInto(body, view) {
  // A monitored answer is shown from its per-token entries (each token's own text), a plain one from deltas.
  const monitored = body.emlens?.monitor !== undefined;
  const r = await api('/v1/chat/completions', body);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    for (let cut = buf.indexOf('\n\n'); cut >= 0; cut = buf.indexOf('\n\n')) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices) {
          if (monitored) {
            for (const m of c.emlens?.monitor?.content ?? []) view.token(m.token, m.projections[0]);
          } else if (c.delta?.content) view.token(c.delta.content, null);
        }
      }
    }
  }
}

/** An answer shown as token spans coloured by projection (a shared scale across `group`). */
function answerView(el, scoreEl, group) {
  el.replaceChildren();
  if (scoreEl) scoreEl.textContent = '';
  const values = [];
  const view = {
    values,
    token(text, projection) {
      const span = document.createElement('span');
      span.textContent = text;
      if (projection !== null && Number.isFinite(projection)) {
        span.dataset.projection = String(projection);
        span.title = `projection ${projection.toFixed(3)}`;
        values.push(projection);
      }
      el.append(span);
      group.recolour();
      if (scoreEl && values.length > 0) {
        scoreEl.textContent = `mean projection ${mean(values).toFixed(3)} over ${values.length} tokens`;
      }
    },
  };
  group.views.push({ el, values });
  return view;
}

function colourGroup() {
  const group = {
    views: [],
    recolour() {
      let max = 0;
      for (const v of group.views) for (const x of v.values) max = Math.max(max, Math.abs(x));
      if (max === 0) return;
      for (const v of group.views) {
        for (const span of v.el.querySelectorAll('span[data-projection]')) {
          const p = Number(span.dataset.projection);
          const a = (0.6 * Math.abs(p)) / max;
          span.style.backgroundColor = p >= 0 ? `rgba(220, 60, 40, ${a})` : `rgba(40, 90, 220, ${a})`;
        }
      }
    },
  };
  return group;
}

function mean(xs) {
  return xs.reduce((s, x) => s + x, 0) / xs.length;
}

function setBusy(busy) {
  state.busy = busy;
  $('send').disabled = busy;
  $('sweep').disabled = busy;
}

async function send() {
  if (state.busy) return;
  clearError();
  const prompt = $('prompt').value;
  if (prompt.trim() === '') {
    showError('The prompt is empty; type a question first.');
    return;
  }
  setBusy(true);
  try {
    const mode = document.querySelector('input[name="mode"]:checked').value;
    const base = chatBody(prompt, null, true);
    const steered = chatBody(prompt, { mode, scale: Number($('scale').value) }, true);
    const group = colourGroup();
    const a = answerView($('baseline'), $('baseline-score'), group);
    const b = answerView($('intervened'), $('intervened-score'), group);
    const title =
      currentDirection() === null
        ? 'Intervened (no direction chosen)'
        : mode === 'steer'
          ? `Steered, scale ${$('scale').value}`
          : 'Ablated';
    $('intervened-title').textContent = title;
    setStatus('Generating...');
    await Promise.all([streamInto(base, a), streamInto(steered, b)]);
    setStatus(`Done: ${state.model}.`);
  } catch (e) {
    setStatus('Failed.');
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

function parseScales() {
  const parts = $('sweep-scales')
    .value.split(/[\s,]+/)
    .filter((s) => s !== '');
  const scales = parts.map(Number);
  if (scales.length === 0 || scales.some((s) => !Number.isFinite(s))) {
    throw new Error('The sweep scales are not a list of numbers; type them like -8, 0, 8.');
  }
  return scales;
}

async function sweep() {
  if (state.busy) return;
  clearError();
  setBusy(true);
  try {
    if (currentDirection() === null)
      throw new Error('A sweep needs a direction; pick a direction file first.');
    const scales = parseScales();
    const prompt = $('prompt').value;
    const row = $('sweep-row');
    row.replaceChildren();
    $('sweep-plot').replaceChildren();
    const group = colourGroup();
    const points = [];
    for (const scale of scales) {
      setStatus(`Sweep: scale ${scale}...`);
      const card = document.createElement('article');
      card.className = 'sweep-card';
      const h = document.createElement('h3');
      h.textContent = `scale ${scale}`;
      const answer = document.createElement('div');
      answer.className = 'answer';
      const score = document.createElement('p');
      score.className = 'score';
      card.append(h, answer, score);
      row.append(card);
      const view = answerView(answer, score, group);
      await streamInto(chatBody(prompt, { mode: 'steer', scale }, true), view);
      if (view.values.length > 0) points.push([scale, mean(view.values)]);
      $('sweep-plot').replaceChildren(plot(points));
    }
    setStatus(`Sweep done: ${scales.length} scales.`);
  } catch (e) {
    setStatus('Failed.');
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

/** An SVG line plot of mean projection against scale. */
function plot(points) {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 520;
  const H = 220;
  const m = { l: 56, r: 16, t: 14, b: 38 };
  const el = (name, attrs, text) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const svg = el('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img' });
  svg.append(el('title', {}, 'Mean projection of the generated tokens against steering scale'));
  if (points.length === 0) return svg;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const pad = (lo, hi) => (lo === hi ? [lo - 1, hi + 1] : [lo, hi]);
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  svg.append(
    el('rect', {
      x: m.l,
      y: m.t,
      width: W - m.l - m.r,
      height: H - m.t - m.b,
      fill: '#fafbfc',
      stroke: '#c9d0d9',
    }),
  );
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    svg.append(
      el(
        'text',
        { x: m.l - 6, y: Y(y) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5b6573' },
        y.toFixed(2),
      ),
    );
  }
  for (const x of xs) {
    svg.append(
      el(
        'text',
        { x: X(x), y: H - m.b + 16, 'text-anchor': 'middle', 'font-size': 11, fill: '#5b6573' },
        String(x),
      ),
    );
  }
  svg.append(
    el(
      'text',
      { x: (m.l + W - m.r) / 2, y: H - 4, 'text-anchor': 'middle', 'font-size': 12 },
      'steering scale',
    ),
  );
  svg.append(
    el(
      'text',
      {
        x: 12,
        y: (m.t + H - m.b) / 2,
        'text-anchor': 'middle',
        'font-size': 12,
        transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`,
      },
      'mean projection',
    ),
  );
  svg.append(
    el('polyline', {
      points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(' '),
      fill: 'none',
      stroke: '#1f5fbf',
      'stroke-width': 2,
    }),
  );
  for (const [x, y] of points) {
    const c = el('circle', { cx: X(x), cy: Y(y), r: 4, fill: '#1f5fbf', 'data-scale': x, 'data-score': y });
    c.append(el('title', {}, `scale ${x}: mean projection ${y.toFixed(3)}`));
    svg.append(c);
  }
  return svg;
}

function init() {
  $('key').value = sessionStorage.getItem(KEY_STORE) ?? '';
  $('connect').addEventListener('click', connect);
  $('key').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      connect();
    }
  });
  $('direction').addEventListener('change', directionChanged);
  $('layer-mode').addEventListener('change', layerModeChanged);
  const showScale = () => {
    $('scale-value').textContent = $('scale').value;
  };
  $('scale').addEventListener('input', showScale);
  $('send').addEventListener('click', send);
  $('sweep').addEventListener('click', sweep);
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $('controls').addEventListener('submit', (e) => e.preventDefault());
  showScale();
  layerModeChanged();
  directionChanged();
  connect();
}

init();
