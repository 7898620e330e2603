// Quartermaster web UI. Plain JavaScript, no dependencies, served from the
// replica's binary (raft-node/src/http/ui/). It reads the HTTP JSON API of
// the replica that served it (with `?stale` on a follower), follows the
// event stream (/v1/events) to refresh what it shows, and releases an
// allocation after a confirmation dialog. Why no framework: see ui/mod.rs.
'use strict';
(() => {
  /** How often the replica table, usage and heartbeat ages are read again. */
  const POLL_MS = 2000;
  /** Usage samples kept for the chart: ten minutes at POLL_MS. */
  const CHART_SAMPLES_MAX = 300;
  /** Events kept on the events view. */
  const EVENTS_SHOWN_MAX = 200;
  /** Past events shown when the page opens. */
  const EVENTS_BACKLOG = 100;
  /** Providers per page asked of /v1/providers (its maximum). */
  const PROVIDERS_PAGE = 10000;
  /** Pages of providers read at most (a million providers). */
  const PROVIDER_PAGES_MAX = 100;
  /** Allocations per page of the allocations view. */
  const ALLOCATIONS_PAGE = 50;
  /** Events arriving within this long cause one refresh. */
  const REFRESH_DEBOUNCE_MS = 250;
  /** Wait before reopening a closed event stream. */
  const EVENTS_RETRY_MS = 1000;
  const STATES = ['queued', 'allocation', 'monitoring', 'deallocation', 'idle', 'error'];
  const COLORS = ['#0969da', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#1b7c83', '#57606a'];

  const state = {
    cluster: null,
    identity: null,
    usage: null,
    /** Reading from a follower (or a replica without a leader): `?stale`. */
    stale: false,
    samples: [],
    events: [],
    lastRevision: 0,
    source: null,
    providers: [],
    sort: { key: 'provider_id', dir: 1 },
    allocationCursors: [''],
    route: null,
    refreshTimer: null,
    timings: {},
  };
  window.qm = state;

  // --- helpers

  const $ = (selector, root = document) => root.querySelector(selector);
  const esc = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const pct = (ratio) => `${Math.round(ratio * 100)}%`;
  const statusSpan = (text, testid) => `<span class="status ${esc(text)}"${testid ? ` data-testid="${testid}"` : ''}>${esc(text)}</span>`;
  const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '');
  const age = (ms) => (ms == null ? '—' : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);
  const reqLink = (id) => `<a href="#/request/${esc(id)}" class="mono">${esc(String(id).slice(0, 8))}…</a>`;
  const providerLink = (id) => `<a href="#/providers?q=${encodeURIComponent(id)}">${esc(id)}</a>`;
  const allocationsOf = (id, text) => `<a href="#/allocations?provider=${encodeURIComponent(id)}" data-testid="allocations-link">${esc(text)}</a>`;

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.message || body.error)) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  /** One call of the JSON API on this replica. Reads add `stale` on a follower. */
  async function api(path, options = {}) {
    const method = options.method || 'GET';
    let url = path;
    if (method === 'GET' && state.stale && !path.startsWith('/v1/cluster') && !path.startsWith('/v1/identity')) {
      url += (url.includes('?') ? '&' : '?') + 'stale';
    }
    const response = await fetch(url, { redirect: 'manual', headers: { Accept: 'application/json' }, ...options });
    if (response.type === 'opaqueredirect' || response.status === 307) {
      // This replica stopped leading since the last look: read what it has.
      if (method === 'GET' && !state.stale) {
        state.stale = true;
        return api(path, options);
      }
      throw new ApiError(307, { error: 'not_leader', message: 'this replica is not the leader: writes go to the leader' });
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = { message: text };
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function showError(error) {
    const box = $('#error');
    if (!error) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.textContent = `Could not read from this replica: ${error.message}`;
  }

  // --- cluster, identity, usage: polled

  function leaderPage(hash) {
    const cluster = state.cluster;
    if (!cluster || !cluster.leader_http_addr) return null;
    return `${location.protocol}//${cluster.leader_http_addr}/ui/${hash || location.hash}`;
  }

  function renderHeader() {
    const cluster = state.cluster;
    if (cluster) {
      const role = cluster.leader_id == null ? 'no leader known' : cluster.leader_id === cluster.node_id ? 'leader' : 'follower';
      $('#replica').innerHTML = `replica ${esc(cluster.node_id)} · ${esc(role)} · term ${esc(cluster.term)} · applied ${esc(cluster.applied_index)}`;
    }
    const stale = $('#stale');
    if (cluster && state.stale) {
      const leader = leaderPage();
      const who = cluster.leader_id == null ? 'No leader is known right now' : `Replica ${cluster.node_id} is a follower (the leader is replica ${cluster.leader_id})`;
      stale.hidden = false;
      stale.innerHTML = `${esc(who)}: reads here are stale, as of what it has applied (index ${esc(cluster.applied_index)}), and may lag the leader.` +
        (leader ? ` <a href="${esc(leader)}">Open the leader's page</a> for current reads and writes.` : '');
    } else {
      stale.hidden = true;
    }
    const me = state.identity;
    if (me) {
      $('#whoami').textContent = !me.tls ? 'TLS off: no identity, every action allowed' : me.namespace ? `${me.role} ${me.name} · namespace ${me.namespace}` : `${me.role} ${me.name}`;
    }
  }

  async function refreshCluster() {
    const cluster = await api('/v1/cluster');
    state.cluster = cluster;
    state.stale = cluster.leader_id !== cluster.node_id;
  }

  async function refreshUsage() {
    state.usage = await api('/v1/state');
    // Shown on the overview; an identity that may not list quotas (a
    // monitor, a provider) is told so there rather than failing the page.
    state.quotas = await api('/v1/quotas').catch((error) => ({ error }));
    const sample = { t: Date.now(), kinds: {} };
    for (const [kind, usage] of Object.entries(state.usage.by_kind)) {
      sample.kinds[kind] = usage.capacity ? usage.used / usage.capacity : 0;
    }
    state.samples.push(sample);
    if (state.samples.length > CHART_SAMPLES_MAX) state.samples.shift();
  }

  async function poll() {
    try {
      await refreshCluster();
      await refreshUsage();
      showError(null);
      renderHeader();
      if (state.route && (state.route.view === 'overview' || state.route.view === 'providers')) await state.route.update();
    } catch (error) {
      showError(error);
    }
  }

  /** Refresh the view shown (debounced): the event stream says something changed. */
  function scheduleRefresh() {
    if (state.refreshTimer) return;
    state.refreshTimer = setTimeout(async () => {
      state.refreshTimer = null;
      try {
        await refreshUsage();
        if (state.route) await state.route.update();
        showError(null);
      } catch (error) {
        showError(error);
      }
    }, REFRESH_DEBOUNCE_MS);
  }

  // --- the event stream

  function setLive(on, text) {
    const live = $('#live');
    live.className = `live ${on ? 'on' : 'off'}`;
    live.textContent = text;
  }

  const EVENT_TYPES = ['resource_status', 'provider_registered', 'provider_updated', 'provider_deregistered', 'provider_failed',
    'provider_recovered', 'allocation_granted', 'request_queued', 'request_rejected', 'request_cancelled', 'allocation_released',
    'allocation_expired', 'allocation_moved', 'allocation_confirmed', 'deallocation_confirmed', 'lease_renewed', 'leases_refreshed',
    'released_matching', 'quota_set', 'quota_deleted', 'preemption_set', 'allocation_preempted', 'provider_scheduling',
    'optimization_needed', 'allocation_moving', 'optimization_failed', 'move_target_ready', 'optimization_complete',
    'policy_set', 'policy_deleted', 'policy_bound', 'policy_unbound'];

  /** Opens /v1/events after the last revision seen. EventSource itself
   * reconnects with Last-Event-ID when the stream breaks; a stream refused
   * or ended for good is reopened here, from the last revision seen. */
  function connectEvents(from) {
    if (state.source) state.source.close();
    const url = from ? `/v1/events?from=${from}` : '/v1/events';
    const source = new EventSource(url);
    state.source = source;
    source.onopen = () => setLive(true, 'events: live');
    const onEvent = (message) => {
      const revision = Number(message.lastEventId);
      if (revision && revision <= state.lastRevision) return;
      state.lastRevision = revision || state.lastRevision;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      state.events.unshift(event);
      if (state.events.length > EVENTS_SHOWN_MAX) state.events.pop();
      if (state.route && state.route.view === 'events') state.route.update();
      else scheduleRefresh();
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.onmessage = onEvent;
    source.addEventListener('error', (message) => {
      if (message.data) {
        // The server's own `event: error`: the revision asked for is
        // compacted. Start again from what is kept now.
        source.close();
        state.lastRevision = 0;
        setTimeout(() => connectEvents(0), EVENTS_RETRY_MS);
        return;
      }
      setLive(false, 'events: reconnecting');
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(() => connectEvents(state.lastRevision ? state.lastRevision + 1 : 0), EVENTS_RETRY_MS);
      }
    });
  }

  // --- overview

  function chart() {
    const samples = state.samples;
    const width = 720, height = 140, left = 34, right = 8, top = 8, bottom = 18;
    const now = Date.now();
    const span = Math.max(60000, now - (samples.length ? samples[0].t : now));
    const x = (t) => left + ((t - (now - span)) / span) * (width - left - right);
    const y = (ratio) => top + (1 - ratio) * (height - top - bottom);
    const kinds = Object.keys(state.usage ? state.usage.by_kind : {});
    const lines = kinds.map((kind, i) => {
      const points = samples.filter((s) => kind in s.kinds).map((s) => `${x(s.t).toFixed(1)},${y(s.kinds[kind]).toFixed(1)}`).join(' ');
      return `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${points}"/>`;
    });
    const minutes = Math.round(span / 60000);
    const summary = kinds.map((kind) => {
      const last = samples.length ? samples[samples.length - 1].kinds[kind] || 0 : 0;
      return `${kind} ${pct(last)}`;
    }).join(', ');
    return `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="chart-title" data-testid="chart">
      <title id="chart-title">Utilization by kind over the last ${minutes} minute(s): now ${esc(summary || 'no capacity')}</title>
      <line x1="${left}" x2="${width - right}" y1="${y(1)}" y2="${y(1)}" stroke="#d0d7de"/>
      <line x1="${left}" x2="${width - right}" y1="${y(0)}" y2="${y(0)}" stroke="#d0d7de"/>
      <text x="2" y="${y(1) + 4}">100%</text><text x="12" y="${y(0) + 4}">0%</text>
      <text x="${left}" y="${height - 4}">${minutes} min ago</text><text x="${width - right - 20}" y="${height - 4}">now</text>
      ${lines.join('')}
    </svg>
    <p class="legend">${kinds.map((kind, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(kind)}</span>`).join('')}</p>`;
  }

  function card(label, value, testid, bad) {
    return `<div class="card${bad ? ' bad' : ''}"><span class="n" data-testid="${testid}">${esc(value)}</span><span class="label">${esc(label)}</span></div>`;
  }

  function preemptionText(setting) {
    if (setting == null) return 'as the cluster';
    if (setting === 'off') return 'off';
    return `from priority ${setting.from_priority}`;
  }

  /** Use against quota per namespace (`/v1/quotas`), a bar per limited kind. */
  function quotasTable(quotas) {
    if (!quotas) return '';
    if (quotas.error) return `<p class="muted" data-testid="quotas-hidden">Not shown: ${esc(quotas.error.message)}</p>`;
    const rows = quotas.namespaces.filter((n) => Object.keys(n.quota).length || n.preemption != null || !n.preemptible).map((n) => {
      const kinds = [...new Set([...Object.keys(n.quota), ...Object.keys(n.held)])].sort().map((kind) => {
        const held = n.held[kind] || 0;
        if (!(kind in n.quota)) return `<div>${esc(kind)}: ${esc(held)} held, no limit</div>`;
        const limit = n.quota[kind];
        const ratio = limit ? Math.min(1, held / limit) : 1;
        return `<div class="bar${held >= limit ? ' full' : ''}" role="img" aria-label="${esc(kind)}: ${held} of ${limit} held" data-testid="quota-bar" data-kind="${esc(kind)}">
          <span style="width:${(ratio * 100).toFixed(1)}%"></span><em>${esc(kind)} ${esc(held)} / ${esc(limit)}</em></div>`;
      });
      return `<tr data-testid="quota-row" data-namespace="${esc(n.namespace)}"><th scope="row">${esc(n.namespace)}</th><td>${kinds.join('')}</td>
        <td class="num">${esc(n.queued)} queued</td><td>preemption ${esc(preemptionText(n.preemption))}${n.preemptible ? '' : ', never preempted'}</td></tr>`;
    });
    const cluster = `<p class="muted">Cluster preemption: ${esc(preemptionText(quotas.cluster_preemption))}.</p>`;
    return rows.length
      ? `<table class="kinds"><caption class="sr-only">Use against quota per namespace</caption><tbody>${rows.join('')}</tbody></table>${cluster}`
      : `<p class="muted">No namespace has a quota.</p>${cluster}`;
  }

  const overview = {
    view: 'overview',
    title: 'Overview',
    mount(view) {
      view.innerHTML = `<h2 class="sr-only">Overview</h2><section aria-labelledby="h-summary"><h2 id="h-summary">Summary</h2><div class="cards" id="cards"></div></section>
        <section aria-labelledby="h-replicas"><h2 id="h-replicas">Replicas</h2><div id="replicas"></div></section>
        <section aria-labelledby="h-capacity"><h2 id="h-capacity">Capacity by kind</h2><div id="capacity"></div></section>
        <section aria-labelledby="h-chart"><h2 id="h-chart">Utilization over the last minutes</h2><div id="chart"></div></section>
        <section aria-labelledby="h-quotas"><h2 id="h-quotas">Quotas by namespace</h2><div id="quotas"></div></section>
        <section aria-labelledby="h-failed"><h2 id="h-failed">Failed providers</h2><div id="failed"></div></section>`;
    },
    async update() {
      const usage = state.usage, cluster = state.cluster;
      if (!usage || !cluster) return;
      const active = usage.providers.filter((p) => p.status === 'active').length;
      $('#cards').innerHTML = card('providers', usage.providers.length, 'count-providers') + card('active', active, 'count-active') +
        card('failed', usage.failed_providers.length, 'count-failed', usage.failed_providers.length > 0) +
        card('allocations held', usage.active_allocations, 'count-allocations') + card('queued requests', usage.queue_len, 'count-queue') +
        card('revision', usage.revision, 'revision');
      const rows = cluster.replicas.map((r) => {
        const health = !r.reachable ? 'down' : r.knows_leader ? 'healthy' : 'no-leader';
        const link = r.http_addr ? `<a href="${esc(`${location.protocol}//${r.http_addr}/ui/`)}">${esc(r.http_addr)}</a>` : '—';
        const self = r.id === cluster.node_id ? ' (this page)' : '';
        return `<tr data-testid="replica-row" data-id="${esc(r.id)}"><td>${esc(r.id)}${self}</td><td>${statusSpan(r.role, 'replica-role')}</td>
          <td class="num">${esc(r.term ?? '—')}</td><td class="num">${esc(r.commit_index ?? '—')}</td><td class="num">${esc(r.applied_index ?? '—')}</td>
          <td>${statusSpan(health, 'replica-health')}</td><td>${link}</td></tr>`;
      });
      $('#replicas').innerHTML = `<table><caption class="sr-only">Replicas as replica ${esc(cluster.node_id)} sees them</caption>
        <thead><tr><th scope="col">id</th><th scope="col">role</th><th scope="col" class="num">term</th><th scope="col" class="num">commit index</th>
        <th scope="col" class="num">applied index</th><th scope="col">health</th><th scope="col">web UI</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
      const kinds = Object.entries(usage.by_kind).map(([kind, k]) => {
        const ratio = k.capacity ? k.used / k.capacity : 0;
        return `<tr data-kind="${esc(kind)}"><th scope="row">${esc(kind)}</th><td><div class="bar" role="img" aria-label="${esc(kind)}: ${k.used} of ${k.capacity} used, ${k.free} free">
          <span style="width:${(ratio * 100).toFixed(1)}%"></span><em>${esc(k.used)} / ${esc(k.capacity)} used (${pct(ratio)})</em></div></td>
          <td class="num">${esc(k.free)} free</td><td class="num">${k.failed_capacity ? `${esc(k.failed_capacity)} on failed providers` : ''}</td></tr>`;
      });
      $('#capacity').innerHTML = kinds.length ? `<table class="kinds"><tbody>${kinds.join('')}</tbody></table>` : '<p class="muted">No provider has registered.</p>';
      $('#chart').innerHTML = chart();
      $('#quotas').innerHTML = quotasTable(state.quotas);
      $('#failed').innerHTML = usage.failed_providers.length
        ? `<ul data-testid="failed-list">${usage.failed_providers.map((id) => `<li>${providerLink(id)} — ${allocationsOf(id, 'its allocations')}</li>`).join('')}</ul>`
        : '<p class="muted">None.</p>';
    },
  };

  // --- providers

  function providerKinds(provider) {
    const kinds = {};
    for (const r of provider.resources) {
      const k = (kinds[r.kind] = kinds[r.kind] || { used: 0, capacity: 0 });
      k.used += r.used;
      k.capacity += r.capacity;
    }
    return kinds;
  }

  function providerMetrics(provider) {
    const sums = {};
    for (const r of provider.resources) {
      for (const [name, value] of Object.entries(r.metrics || {})) {
        const m = (sums[name] = sums[name] || { total: 0, n: 0 });
        m.total += value;
        m.n += 1;
      }
    }
    return Object.entries(sums).map(([name, m]) => `${name} ${Number((m.total / m.n).toFixed(2))}`).join(', ');
  }

  const utilization = (p) => Math.max(0, ...Object.values(providerKinds(p)).map((k) => (k.capacity ? k.used / k.capacity : 0)));
  const SORT_KEYS = {
    provider_id: (p) => p.provider_id,
    status: (p) => p.status,
    heartbeat_age_ms: (p) => (p.heartbeat_age_ms == null ? Infinity : p.heartbeat_age_ms),
    allocations: (p) => p.allocations,
    utilization,
  };

  /** `zone=a, rack=3` → [['zone','a'], ['rack','3']]; a bare `gpu` asks only for the key. */
  function parseLabels(text) {
    return text.split(',').map((part) => part.trim()).filter(Boolean).map((part) => {
      const at = part.indexOf('=');
      return at < 0 ? [part, null] : [part.slice(0, at).trim(), part.slice(at + 1).trim()];
    });
  }

  const providers = {
    view: 'providers',
    title: 'Providers',
    mount(view, params) {
      view.innerHTML = `<h2>Providers</h2>
        <form class="filters" id="provider-filters" role="search" aria-label="Filter providers">
          <label>Provider id contains<input id="filter-q" name="q" value="${esc(params.get('q') || '')}" autocomplete="off"></label>
          <label>Labels (key=value, comma separated)<input id="filter-label" name="label" value="${esc(params.get('label') || '')}" placeholder="zone=a" autocomplete="off"></label>
          <label>Status<select id="filter-status" name="status"><option value="">any</option><option>active</option><option>failed</option></select></label>
        </form>
        <p class="muted" id="provider-count" role="status"></p>
        <p id="provider-action-result" role="status" aria-live="polite"></p>
        <table id="provider-table"><thead><tr>${[['provider_id', 'provider'], ['status', 'status'], ['heartbeat_age_ms', 'heartbeat age'],
          ['allocations', 'allocations'], ['utilization', 'utilization per kind']].map(([key, label]) =>
          `<th scope="col" data-key="${key}"><button type="button" data-sort="${key}">${label}</button></th>`).join('')}
          <th scope="col">measured metrics (mean over units)</th><th scope="col">labels</th><th scope="col">actions</th></tr></thead><tbody id="provider-rows"></tbody></table>`;
      $('#provider-rows').addEventListener('click', (e) => {
        const button = e.target.closest('button[data-action]');
        if (button) this.schedule(button.dataset.provider, button.dataset.action);
      });
      $('#filter-status').value = params.get('status') || '';
      const form = $('#provider-filters');
      form.addEventListener('input', () => this.render());
      form.addEventListener('submit', (e) => e.preventDefault());
      for (const button of view.querySelectorAll('th button')) {
        button.addEventListener('click', () => {
          const key = button.dataset.sort;
          state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
          this.render();
        });
      }
    },
    async update() {
      let all = [];
      let next = null;
      for (let page = 0; page < PROVIDER_PAGES_MAX; page++) {
        const answer = await api(`/v1/providers?limit=${PROVIDERS_PAGE}${next ? `&next=${encodeURIComponent(next)}` : ''}`);
        all = all.concat(answer.providers);
        next = answer.next;
        if (!next) break;
      }
      state.providers = all;
      this.render();
    },
    render() {
      if (!$('#provider-rows')) return;
      const q = $('#filter-q').value.trim().toLowerCase();
      const labels = parseLabels($('#filter-label').value);
      const status = $('#filter-status').value;
      const shown = state.providers.filter((p) => (!q || p.provider_id.toLowerCase().includes(q)) && (!status || p.status === status) &&
        labels.every(([key, value]) => key in p.labels && (value === null || p.labels[key] === value)));
      const { key, dir } = state.sort;
      const by = SORT_KEYS[key];
      shown.sort((a, b) => {
        const va = by(a), vb = by(b);
        return (va < vb ? -1 : va > vb ? 1 : 0) * dir || (a.provider_id < b.provider_id ? -1 : 1);
      });
      for (const th of document.querySelectorAll('#provider-table th[data-key]')) {
        if (th.dataset.key === key) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
        else th.removeAttribute('aria-sort');
      }
      const heartbeatNote = state.stale ? ' title="heartbeats reach the leader only: see the leader\'s page"' : '';
      $('#provider-rows').innerHTML = shown.map((p) => {
        const kinds = Object.entries(providerKinds(p)).map(([kind, k]) => {
          const ratio = k.capacity ? k.used / k.capacity : 0;
          return `<div><span class="mini" aria-hidden="true"><span style="width:${(ratio * 100).toFixed(0)}%"></span></span>${esc(kind)} ${k.used}/${k.capacity}</div>`;
        }).join('');
        const labelText = Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(', ');
        return `<tr data-testid="provider-row" data-provider="${esc(p.provider_id)}"><th scope="row">${esc(p.provider_id)}</th>
          <td>${statusSpan(p.status, 'provider-status')}${p.leaving ? ` ${statusSpan('leaving', 'provider-leaving')}` : ''}${p.scheduling && p.scheduling !== 'open' ? ` ${statusSpan(p.scheduling, 'provider-scheduling')}` : ''}</td><td class="num"${heartbeatNote}>${age(p.heartbeat_age_ms)}</td>
          <td class="num">${allocationsOf(p.provider_id, p.allocations)}</td><td>${kinds}</td>
          <td>${esc(providerMetrics(p) || '—')}</td><td class="mono">${esc(labelText)}</td><td>${this.actions(p)}</td></tr>`;
      }).join('');
      $('#provider-count').textContent = `${shown.length} of ${state.providers.length} providers` +
        (state.stale ? ' (heartbeat ages are known to the leader only)' : '');
    },
  };

  /** An operator's buttons for one provider: cordon or uncordon, drain. */
  providers.actions = function actions(p) {
    if (!(state.identity && state.identity.may_schedule_providers) || state.stale) return '';
    const id = esc(p.provider_id);
    const open = !p.scheduling || p.scheduling === 'open';
    return (open
      ? `<button type="button" data-action="cordon" data-provider="${id}" aria-label="Cordon ${id}">Cordon</button>`
      : `<button type="button" data-action="uncordon" data-provider="${id}" aria-label="Uncordon ${id}">Uncordon</button>`) +
      (p.scheduling === 'draining' ? '' : ` <button type="button" class="danger" data-action="drain" data-provider="${id}" aria-label="Drain ${id}">Drain</button>`);
  };

  /** Cordons, uncordons or drains `providerId` after the operator confirms. */
  providers.schedule = async function schedule(providerId, action) {
    const what = {
      cordon: `Cordon ${providerId}? Nothing new will be placed on it; what it holds stays.`,
      uncordon: `Uncordon ${providerId}? It takes new placements again (a drain under way stops).`,
      drain: `Drain ${providerId}? Its movable allocations move to other providers now; in 10 minutes whatever is left is moved as if it left.`,
    }[action];
    if (!(await confirmDialog(what))) return;
    const result = $('#provider-action-result');
    try {
      const answer = await api(`/v1/providers/${encodeURIComponent(providerId)}/${action}`, { method: 'POST', headers: { Accept: 'application/json' } });
      const cannot = (answer.cannot_move || []).length;
      result.textContent = `${providerId} is ${answer.scheduling}` +
        (action === 'drain' ? `: ${(answer.moving || []).length} moving, ${cannot} cannot move now${cannot ? ` (${answer.cannot_move.join('; ')})` : ''}.` : '.');
    } catch (error) {
      result.textContent = `Not done: ${error.message}`;
    }
    await this.update();
  };

  // --- allocations

  const allocations = {
    view: 'allocations',
    title: 'Allocations',
    mount(view, params) {
      const me = state.identity || {};
      const namespace = me.namespace || params.get('namespace') || '';
      view.innerHTML = `<h2>Allocations</h2>
        <form class="filters" id="allocation-filters" role="search" aria-label="Filter allocations">
          <label>Namespace<input name="namespace" id="f-namespace" value="${esc(namespace)}" ${me.namespace ? 'readonly aria-describedby="ns-note"' : ''} autocomplete="off"></label>
          <label>Requester<input name="requester" id="f-requester" value="${esc(params.get('requester') || '')}" autocomplete="off"></label>
          <label>Provider<input name="provider" id="f-provider" value="${esc(params.get('provider') || '')}" autocomplete="off"></label>
          <label>State<select name="state" id="f-state"><option value="">any</option>${STATES.map((s) => `<option>${s}</option>`).join('')}</select></label>
          <button type="submit">Apply</button>
        </form>
        ${me.namespace ? `<p class="muted" id="ns-note">Your certificate's namespace: ${esc(me.namespace)}; the replica shows no other.</p>` : ''}
        <table><thead><tr><th scope="col">request</th><th scope="col">requester</th><th scope="col">namespace</th><th scope="col">state</th>
          <th scope="col">status</th><th scope="col">provider</th><th scope="col">units</th><th scope="col">lease expires</th><th scope="col">submitted</th></tr></thead>
          <tbody id="allocation-rows"></tbody></table>
        <div class="pager"><button type="button" id="page-prev">Previous page</button><span id="page-number" role="status"></span><button type="button" id="page-next">Next page</button></div>`;
      $('#f-state').value = params.get('state') || '';
      state.allocationCursors = [''];
      $('#allocation-filters').addEventListener('submit', (e) => {
        e.preventDefault();
        const query = new URLSearchParams();
        for (const [name, value] of new FormData(e.target)) if (value) query.set(name, value);
        location.hash = `#/allocations?${query}`;
      });
      $('#page-prev').addEventListener('click', () => {
        if (state.allocationCursors.length > 1) state.allocationCursors.pop();
        this.update();
      });
      $('#page-next').addEventListener('click', () => {
        if (this.next) state.allocationCursors.push(this.next);
        this.update();
      });
      this.params = params;
    },
    async update() {
      const query = new URLSearchParams({ limit: String(ALLOCATIONS_PAGE) });
      for (const name of ['namespace', 'requester', 'provider', 'state']) {
        const value = name === 'namespace' && state.identity && state.identity.namespace ? state.identity.namespace : this.params.get(name);
        if (value) query.set(name, value);
      }
      const after = state.allocationCursors[state.allocationCursors.length - 1];
      if (after) query.set('next', after);
      const answer = await api(`/v1/requests?${query}`);
      this.next = answer.next;
      if (!$('#allocation-rows')) return;
      $('#allocation-rows').innerHTML = answer.requests.map((r) => {
        const units = (r.grants || []).map((g) => (g.amount > 1 ? `${g.resource_id}×${g.amount}` : g.resource_id)).join(', ');
        return `<tr data-testid="allocation-row" data-request="${esc(r.request_id)}"><td>${reqLink(r.request_id)}</td><td>${esc(r.requester_id)}</td>
          <td>${esc(r.namespace)}</td><td>${statusSpan(r.state, 'allocation-state')}</td><td>${statusSpan(r.status)}</td>
          <td>${r.provider_id ? providerLink(r.provider_id) : '—'}</td><td class="mono">${esc(units || '—')}</td>
          <td>${esc(r.lease_expires_at || '—')}</td><td>${esc(time(r.submitted_at_ms))}</td></tr>`;
      }).join('') || '<tr><td colspan="9" class="muted">No allocation matches.</td></tr>';
      $('#page-prev').disabled = state.allocationCursors.length <= 1;
      $('#page-next').disabled = !answer.next;
      $('#page-number').textContent = `page ${state.allocationCursors.length}`;
    },
  };

  // --- one request

  function confirmDialog(text) {
    const dialog = $('#confirm');
    $('#confirm-text').textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
      $('#confirm-cancel').focus();
    });
  }

  const request = {
    view: 'request',
    title: 'Request',
    mount(view, params, id) {
      this.id = id;
      view.innerHTML = `<h2>Request <code>${esc(id)}</code></h2><div id="request-body"><p class="muted">Loading…</p></div>
        <h2>State history</h2><div id="request-history"></div><div id="request-actions"></div><p id="action-result" role="status"></p>`;
    },
    async update() {
      let record, history;
      try {
        [record, history] = await Promise.all([api(`/v1/requests/${encodeURIComponent(this.id)}`), api(`/v1/requests/${encodeURIComponent(this.id)}/history`)]);
      } catch (error) {
        if (error.status === 404) {
          $('#request-body').innerHTML = '<p data-testid="not-found">No request or allocation with this id is visible to you.</p>';
          return;
        }
        throw error;
      }
      const grants = (record.grants || []).map((g) => `<li><code>${esc(g.resource_id)}</code> (${esc(g.kind)}, ${esc(g.amount)})</li>`).join('');
      const requirements = Object.entries(record.resource_requirements || {}).map(([k, v]) => `${k} ${v}`).join(', ');
      $('#request-body').innerHTML = `<dl class="kv">
        <dt>state</dt><dd>${statusSpan(record.state, 'request-state')}</dd>
        <dt>status</dt><dd>${statusSpan(record.status)}</dd>
        <dt>request id</dt><dd><code>${esc(record.request_id)}</code></dd>
        <dt>allocation id</dt><dd><code>${esc(record.allocation_id || '—')}</code></dd>
        <dt>requester</dt><dd>${esc(record.requester_id)}</dd>
        <dt>namespace</dt><dd>${esc(record.namespace)}</dd>
        <dt>priority</dt><dd>${esc(record.priority)}</dd>
        <dt>asked for</dt><dd>${esc(requirements)}</dd>
        <dt>provider</dt><dd>${record.provider_id ? `${providerLink(record.provider_id)} (${allocationsOf(record.provider_id, 'its allocations')})` : '—'}</dd>
        <dt>units</dt><dd>${grants ? `<ul>${grants}</ul>` : '—'}</dd>
        <dt>lease expires</dt><dd>${esc(record.lease_expires_at || 'no lease')}</dd>
        <dt>reason</dt><dd>${esc(record.reason || '—')}</dd></dl>`;
      const steps = history.steps.map((step) => {
        const where = step.event.provider_id || step.event.to_provider;
        return `<li data-testid="history-step"><span class="muted">r${esc(step.revision)} · ${esc(time(step.at_ms))}</span> <code>${esc(step.type)}</code>
          ${step.states.length ? `→ ${step.states.map((s) => statusSpan(s)).join(' → ')}` : ''}${where ? ` on ${providerLink(where)}` : ''}
          ${step.event.reason ? ` <span class="muted">(${esc(step.event.reason)})</span>` : ''}</li>`;
      });
      $('#request-history').innerHTML = (history.complete ? '' : `<p class="muted">Events before revision ${esc(history.oldest_revision)} are no longer kept; the history starts there.</p>`) +
        (steps.length ? `<ol class="steps">${steps.join('')}</ol>` : '<p class="muted">No event about it is kept.</p>');
      this.renderActions(record);
    },
    renderActions(record) {
      const actions = $('#request-actions');
      const releasable = ['queued', 'allocation', 'monitoring'].includes(record.state);
      if (!releasable || !(state.identity && state.identity.may_release)) {
        actions.innerHTML = '';
        return;
      }
      if (state.stale) {
        const leader = leaderPage(`#/request/${record.request_id}`);
        actions.innerHTML = `<p>Releasing is a write, which only the leader takes.${leader ? ` <a href="${esc(leader)}">Release it from the leader's page</a>.` : ' No leader is known right now.'}</p>`;
        return;
      }
      actions.innerHTML = `<button type="button" class="danger" id="release">${record.state === 'queued' ? 'Cancel request' : 'Release allocation'}</button>`;
      $('#release').addEventListener('click', async () => {
        const units = (record.grants || []).map((g) => g.resource_id).join(', ');
        const ok = await confirmDialog(`Release ${record.requester_id}'s allocation ${record.request_id}` +
          (record.provider_id ? ` on ${record.provider_id} (${units})` : '') + '? Its holder loses the units at once.');
        if (!ok) return;
        try {
          const answer = await api('/v1/release', { method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json' }, body: JSON.stringify({ request_id: record.request_id }) });
          $('#action-result').textContent = `Released: the request is now ${answer.state}.`;
        } catch (error) {
          $('#action-result').textContent = `Not released: ${error.message}`;
        }
        await this.update();
      });
    },
  };

  // --- events

  function eventSummary(e) {
    const parts = [];
    if (e.provider_id) parts.push(providerLink(e.provider_id));
    if (e.resource_id) parts.push(`<code>${esc(e.resource_id)}</code> ${esc(e.status || '')}`);
    if (e.request_id) parts.push(reqLink(e.request_id));
    if (e.requester_id) parts.push(esc(e.requester_id));
    if (e.namespace && !e.request_id) parts.push(`namespace ${esc(e.namespace)}`);
    if (e.from_provider) parts.push(`${providerLink(e.from_provider)} → ${providerLink(e.to_provider)}`);
    if (e.reason) parts.push(`<span class="muted">${esc(e.reason)}</span>`);
    return parts.join(' · ');
  }

  const events = {
    view: 'events',
    title: 'Events',
    mount(view) {
      view.innerHTML = `<h2>Live events</h2><p class="muted">The newest first, up to ${EVENTS_SHOWN_MAX}; from <code>/v1/events</code>, resumed after the last revision seen when the stream breaks.</p>
        <table><thead><tr><th scope="col" class="num">revision</th><th scope="col">time</th><th scope="col">type</th><th scope="col">about</th></tr></thead><tbody id="events-list"></tbody></table>`;
    },
    async update() {
      const list = $('#events-list');
      if (!list) return;
      list.innerHTML = state.events.map((e) => `<tr data-testid="event-row" data-revision="${esc(e.revision)}" data-type="${esc(e.type)}">
        <td class="num">${esc(e.revision)}</td><td>${esc(e.timestamp)}</td><td><code>${esc(e.type)}</code></td><td>${eventSummary(e)}</td></tr>`).join('');
    },
  };

  // --- routing

  const VIEWS = { overview, providers, allocations, request, events };

  async function route() {
    const hash = location.hash.replace(/^#\/?/, '') || 'overview';
    const [path, query] = hash.split('?');
    const [name, id] = path.split('/');
    const view = VIEWS[name] || overview;
    const params = new URLSearchParams(query || '');
    const started = performance.now();
    state.route = view;
    for (const link of document.querySelectorAll('nav a')) {
      if (link.dataset.nav === view.view) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${view.title} · Quartermaster`;
    const main = $('#view');
    main.dataset.view = view.view;
    delete main.dataset.ready;
    view.mount(main, params, id ? decodeURIComponent(id) : undefined);
    try {
      await view.update();
      showError(null);
    } catch (error) {
      showError(error);
    }
    if (state.route === view) {
      main.dataset.ready = view.view;
      state.timings[view.view] = Math.round(performance.now() - started);
    }
  }

  async function start() {
    try {
      // Independent reads, at once: the first view waits for all three.
      const [identity] = await Promise.all([api('/v1/identity'), refreshCluster()]);
      state.identity = identity;
      await refreshUsage();
      renderHeader();
    } catch (error) {
      showError(error);
    }
    const revision = state.usage ? state.usage.revision : 0;
    connectEvents(revision > EVENTS_BACKLOG ? revision - EVENTS_BACKLOG + 1 : 1);
    window.addEventListener('hashchange', () => {
      route();
      $('#view').focus();
    });
    await route();
    setInterval(poll, POLL_MS);
  }

  start();
})();
