// The SMART dashboard: reads the node's /v1 API with a token (see src/node/dashboard.rs).
'use strict';
(function () {
  const state = {
    control: null, nodes: {}, services: [], events: [], updated_at_ms: 0,
    chart: typeof uPlot === 'function', lastIndex: 0, servedBy: null,
  };
  window.smartDashboard = state;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

  // The token: from #token=..., else this tab's storage, else asked for.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) { sessionStorage.setItem('smart-token', fromHash); history.replaceState(null, '', location.pathname); }
  let token = sessionStorage.getItem('smart-token');
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value.trim();
    sessionStorage.setItem('smart-token', token);
    $('login').style.display = 'none';
    start();
  });

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: 'Bearer ' + token } });
    if (r.status === 401 || r.status === 403) { $('login').style.display = 'block'; throw new Error('token refused'); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.code + ': ' + body.error.message : r.statusText);
    return body;
  }

  const fmtBps = (b) => b >= 1e9 ? (b / 1e9).toFixed(2) + ' Gb/s' : b >= 1e6 ? (b / 1e6).toFixed(1) + ' Mb/s' : (b / 1e3).toFixed(0) + ' kb/s';
  const fmtBytes = (b) => b >= 2 ** 30 ? (b / 2 ** 30).toFixed(1) + ' GiB' : (b / 2 ** 20).toFixed(0) + ' MiB';

  // A bar: usage (dark) over reservation (light) against capacity, VR as a red tick.
  function bar(used, reserved, capacity, vr, label) {
    if (!capacity) return '<span class="muted">–</span>';
    const pct = (x) => Math.max(0, Math.min(100, 100 * x / capacity)).toFixed(1) + '%';
    return `<span class="bar" title="${esc(label)}"><span class="res" style="width:${pct(reserved)}"></span>` +
      `<span class="use" style="width:${pct(used)}"></span><span class="vr" style="left:${pct(vr * capacity)}"></span></span> ` +
      `<span class="muted">${esc(label)}</span>`;
  }

  function renderNodes(list) {
    const rows = list.map((n) => {
      const known = state.nodes[n.node_id] || {};
      const alive = known.alive !== undefined ? known.alive : n.alive;
      const p = n.placement;
      let cpu = '<span class="muted">no report</span>', net = cpu, inst = n.load.instances;
      if (p && p.capacity) {
        const u = p.usage || { cpu_cores: 0, network_bps: 0 };
        cpu = bar(u.cpu_cores, p.reserved.cpu_cores, p.capacity.cpu_cores, p.vr,
          `${u.cpu_cores.toFixed(2)} / ${p.reserved.cpu_cores.toFixed(2)} / ${(p.vr * p.capacity.cpu_cores).toFixed(1)} cores`);
        net = bar(u.network_bps, p.reserved.network_bps, p.capacity.network_bps, p.vr,
          `${fmtBps(u.network_bps)} / ${fmtBps(p.reserved.network_bps)} / ${fmtBps(p.vr * p.capacity.network_bps)}`);
        inst = p.instances.length + (p.drained ? ' (drained)' : '');
      }
      const st = alive ? 'alive' : 'dead';
      return `<tr data-node="${n.node_id}" data-alive="${alive}" data-drained="${!!(p && p.drained)}">` +
        `<td>n${n.node_id}${state.control && state.control.node_id === n.node_id ? ' ★' : ''}</td>` +
        `<td class="state">${st}</td><td>${esc(n.roles.join(', '))}</td><td>${cpu}</td><td>${net}</td>` +
        `<td>${fmtBytes(n.load.mem_used_mib * 2 ** 20)}</td><td>${esc(inst)}</td><td>${n.last_heard_ms} ms</td>` +
        `<td>${n.http ? `<a href="${esc(n.http)}/ui">${esc(n.http)}</a>` : '<span class="muted">?</span>'}</td></tr>`;
    });
    $('nodes').innerHTML = rows.join('');
  }

  function renderServices(list) {
    $('services').innerHTML = list.map((s) => {
      const u = s.usage, r = s.reserved;
      const cpu = r ? `${u ? u.cpu_cores.toFixed(2) : '–'} / ${r.cpu_cores.toFixed(2)}` : '–';
      const net = r ? `${u ? fmtBps(u.network_bps) : '–'} / ${fmtBps(r.network_bps)}` : '–';
      return `<tr data-service="${esc(s.name)}" data-node="${s.node}"><td>${esc(s.name)}</td><td>n${s.node}</td>` +
        `<td>${esc(s.instance)}</td><td>${s.clients}</td><td>${s.clients_connected ?? '–'}</td><td>${cpu}</td><td>${net}</td>` +
        `<td>${esc(s.endpoint)}</td></tr>`;
    }).join('');
  }

  function renderControl() {
    const c = state.control, el = $('control');
    el.dataset.node = c ? c.node_id : '';
    el.dataset.epoch = c ? c.epoch : '';
    el.textContent = c ? `n${c.node_id} at epoch ${c.epoch}` : 'none (election in progress)';
  }

  // The chart: one CPU series per node, from /v1/usage.
  let chart = null, chartNodes = '';
  function renderChart(usage) {
    if (!state.chart) { $('chart-note').textContent = 'chart library not installed (scripts/setup.sh, then rebuild)'; return; }
    const series = usage.nodes;
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => Math.round(p.at_ms / 1000))))].sort((a, b) => a - b);
    const data = [times];
    for (const s of series) {
      const byT = new Map(s.points.map((p) => [Math.round(p.at_ms / 1000), p.alive ? p.cpu_cores : null]));
      data.push(times.map((t) => (byT.has(t) ? byT.get(t) : null)));
    }
    const key = series.map((s) => s.node_id).join(',');
    if (!chart || key !== chartNodes) {
      if (chart) chart.destroy();
      const colours = ['#1f5fbf', '#c2410c', '#15803d', '#7c3aed', '#b91c1c', '#0e7490', '#a16207', '#be185d'];
      chart = new uPlot({
        width: Math.min(1150, window.innerWidth - 60), height: 220,
        series: [{}].concat(series.map((s, i) => ({ label: 'n' + s.node_id, stroke: colours[i % colours.length], width: 2, spanGaps: false }))),
        axes: [{}, { label: 'cores' }],
        // The last five minutes, from zero cores up.
        scales: {
          x: { time: true, range: () => { const now = Date.now() / 1000; return [now - 300, now]; } },
          y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
        },
      }, data, $('chart'));
      chartNodes = key;
    } else {
      chart.setData(data);
    }
  }

  function addEvent(r) {
    state.events.push(r);
    if (state.events.length > 200) state.events.shift();
    const d = document.createElement('div');
    d.className = r.type + (r.alive === false ? ' down' : '');
    d.dataset.index = r.index;
    const t = new Date(r.at_ms).toLocaleTimeString();
    const { index, at_ms, type, ...rest } = r;
    d.textContent = `${t}  #${index}  ${type}  ${JSON.stringify(rest)}`;
    $('events').prepend(d);
    while ($('events').childNodes.length > 200) $('events').lastChild.remove();
  }

  function onEvent(r) {
    if (r.index) state.lastIndex = Math.max(state.lastIndex, r.index);
    addEvent(r);
    if (r.type === 'member_changed') {
      const n = state.nodes[r.node] || (state.nodes[r.node] = {});
      n.alive = r.alive;
      n.dead_at_ms = r.alive ? null : Date.now();
      const row = document.querySelector(`tr[data-node="${r.node}"]`);
      if (row) { row.dataset.alive = String(r.alive); row.querySelector('.state').textContent = r.alive ? 'alive' : 'dead'; }
    } else if (r.type === 'control_changed') {
      state.control = { node_id: r.node, epoch: r.epoch };
      renderControl();
    }
  }

  // Follows /v1/events (NDJSON), resuming after the last index on reconnect.
  async function follow() {
    for (;;) {
      try {
        const r = await fetch('/v1/events?from=' + state.lastIndex, { headers: { Authorization: 'Bearer ' + token } });
        if (!r.ok) throw new Error('events: ' + r.status);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (line) onEvent(JSON.parse(line));
          }
        }
      } catch (e) {
        $('error').textContent = String(e.message || e);
      }
      await new Promise((res) => setTimeout(res, 1000));
    }
  }

  async function refresh() {
    try {
      const [nodes, services, usage] = await Promise.all([api('/v1/nodes'), api('/v1/services'), api('/v1/usage')]);
      state.control = nodes.control;
      for (const n of nodes.nodes) {
        const k = state.nodes[n.node_id] || (state.nodes[n.node_id] = {});
        if (k.alive !== n.alive) k.dead_at_ms = n.alive ? null : Date.now();
        k.alive = n.alive;
      }
      state.services = services.services;
      renderControl();
      renderNodes(nodes.nodes);
      renderServices(services.services);
      renderChart(usage);
      state.updated_at_ms = Date.now();
      $('updated').textContent = new Date().toLocaleTimeString();
      $('error').textContent = '';
    } catch (e) {
      $('error').textContent = String(e.message || e);
    }
  }

  let started = false;
  function start() {
    if (started) return;
    started = true;
    api('/v1/version').then((v) => { state.servedBy = v.node_id; $('served-by').textContent = 'n' + v.node_id + ' (smart ' + v.version + ')'; }).catch(() => {});
    refresh();
    setInterval(refresh, 1000);
    follow();
  }
  if (token) start(); else $('login').style.display = 'block';
})();
