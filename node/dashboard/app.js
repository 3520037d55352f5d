// The dashboard page: plain JavaScript, no build step. It gets the node's view (api/view, then live as
// server-sent events on /events) and the charts' history (api/history, again every minute), and draws them
// with uPlot. Everything from the node is put in the page as text, never as HTML.
/* global uPlot */

const $ = (id) => document.getElementById(id)

function el(tag, attrs, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v)
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c))
  return e
}

/** "1 entry", "3 entries": as node/util.ts count(). */
function count(n, noun, plural = `${noun}s`) {
  return `${n} ${n === 1 ? noun : plural}`
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds))
  const unit = (n, w) => count(n, w)
  if (s < 120) return unit(s, 'second')
  if (s < 7200) return unit(Math.round(s / 60), 'minute')
  if (s < 3 * 86400) return unit(Math.round(s / 3600), 'hour')
  return unit(Math.round(s / 86400), 'day')
}

function ago(ms, now) {
  return ms === null || ms === undefined ? 'never' : `${duration((now - ms) / 1000)} ago`
}

function bytes(n) {
  if (n === null || n === undefined) return '-'
  if (n < 1024) return `${n} B`
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MB`
  return `${(n / 1073741824).toFixed(1)} GB`
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : 'never'
}

function reasonList(reasons) {
  const ul = el('ul', { class: 'reasons' })
  for (const r of reasons) ul.append(el('li', { class: `reason-${r.level}` }, `${r.level}: ${r.text}`))
  return ul
}

function siteCard(m, judged, now) {
  const h = m.health
  const state = m.self ? 'this site' : m.connected ? 'connected' : `last heard ${ago(m.lastContact, now)}`
  const card = el(
    'div',
    { class: 'card site', 'data-site': m.site, 'data-verdict': judged.verdict },
    el('h3', {}, el('span', { class: 'badge' }, judged.verdict), ` ${m.site}`),
    el('p', {}, `${m.role}, ${state}`),
    el('p', { class: 'muted' }, `last contact ${when(m.lastContact)}`)
  )
  if (h) {
    const runs = [`branchmesh ${h.branchmesh}`, `Node.js ${h.node}`, h.os]
    if (h.sqlite) runs.push(`SQLite ${h.sqlite}`)
    if (h.postgres) runs.push(`PostgreSQL ${h.postgres}`)
    if (h.app) runs.push(`application ${h.app}`)
    card.append(el('p', {}, `runs ${runs.join(', ')}`))
    for (const d of h.disks) {
      const pct = d.total > 0 ? Math.floor((d.free * 100) / d.total) : 0
      card.append(el('p', {}, `disk of ${d.what}: ${bytes(d.free)} free of ${bytes(d.total)} (${pct}%)`))
    }
    if (h.paused) card.append(el('p', { class: 'reason-WARN' }, `snapshots paused: ${h.paused}`))
  } else if (m.software) card.append(el('p', {}, `runs ${m.software}`))
  if (judged.reasons.length) card.append(reasonList(judged.reasons))
  return card
}

function datasetCard(d, judged, now) {
  const card = el(
    'div',
    { class: 'card dataset', 'data-dataset': d.name, 'data-verdict': judged.verdict },
    el('h3', {}, el('span', { class: 'badge' }, judged.verdict), ` ${d.name}`),
    el(
      'p',
      {},
      `${d.engine}, origin ${d.originSite}, epoch ${d.epoch}: ${count(d.length, 'entry', 'entries')}, ` +
        `${bytes(d.bytes)}, ` +
        `last write ${ago(d.lastWriteAt, now)}`
    )
  )
  const others = d.holders.filter((h) => h.role !== 'origin').length
  card.append(el('p', {}, `copies: the latest write is held by ${d.heldBy} of ${count(others, 'other site')}`))
  const table = el(
    'table',
    {},
    el(
      'tr',
      {},
      ...['site', 'role', 'downloaded', 'applied', 'lag', 'last contact', 'error'].map((x) => el('th', {}, x))
    )
  )
  for (const h of d.holders) {
    const lag =
      h.applied === null
        ? 'holds nothing yet'
        : h.role === 'blind'
          ? count(h.lagEntries, 'entry', 'entries')
          : `${duration(h.lagSeconds || 0)}, ${count(h.lagEntries, 'entry', 'entries')}, ${bytes(h.lagBytes)}`
    table.append(
      el(
        'tr',
        { 'data-holder': h.site },
        el('td', {}, h.site),
        el('td', {}, h.role),
        el('td', {}, h.downloaded === null ? '-' : h.downloaded),
        el('td', {}, h.applied === null ? '-' : h.applied),
        el('td', {}, lag),
        el('td', {}, ago(h.lastContact, now)),
        el('td', {}, h.error ? `${h.error}: ${h.errorMessage || ''}` : '')
      )
    )
  }
  card.append(table)
  const cp = d.checkpoint
  card.append(
    el(
      'p',
      {},
      cp
        ? `last checkpoint: this copy ${cp.ok ? 'matched' : 'DIFFERS from'} the origin's at position ${cp.seq}, ` +
            `${ago(cp.at, now)}`
        : 'last checkpoint: none compared here yet'
    )
  )
  const v = d.verified
  card.append(
    el(
      'p',
      {},
      v
        ? `last verify: ${v.ok ? (v.repaired ? 'repaired' : 'equal to the log') : 'DIFFERS from the log'} at ` +
            `position ${v.seq}, ${ago(v.at, now)}`
        : 'last verify: never run here'
    )
  )
  card.append(
    el(
      'p',
      {},
      `snapshots: ${d.snapshots.count} kept here` +
        (d.snapshots.newestAt ? `, the newest ${ago(d.snapshots.newestAt, now)}` : '') +
        `; the oldest moment that can be restored: ${when(d.createdAt)}`
    )
  )
  for (const x of d.divergences) {
    card.append(
      el(
        'p',
        { class: x.changes ? 'reason-WARN' : '' },
        `divergence: ${x.changes} change(s) made here in epoch ${x.epoch}, superseded by epoch ${x.fencedBy} ` +
          `${ago(x.at, now)}: ${x.dir}`
      )
    )
  }
  for (const x of d.damage || []) {
    card.append(
      el(
        'p',
        { class: 'reason-WARN' },
        `mass change at position ${x.seq}: ${x.changed} of ${count(x.before, 'row')} of ${x.table}, ` +
          `${ago(x.at, now)}`
      )
    )
  }
  if (judged.reasons.length) card.append(reasonList(judged.reasons))
  return card
}

function render(view) {
  if (view.error) {
    $('meta').textContent = `The node could not be asked: ${view.error}`
    return
  }
  const s = view.status
  const now = s.generatedAt
  document.body.setAttribute('data-verdict', s.verdict)
  $('verdict').textContent = s.verdict
  $('verdict').setAttribute('data-verdict', s.verdict)
  $('title').textContent = `${s.site}: the mesh as seen from here`
  const connected = s.members.filter((m) => m.connected).length
  $('meta').textContent =
    `node ${s.running ? 'running' : 'NOT running'}; ${count(s.members.length, 'member')}, ` +
    `${connected} connected now; ` +
    `updated ${new Date(now).toLocaleTimeString()}`
  $('reasons').replaceChildren(
    ...s.reasons.map((r) => el('li', { class: `reason-${r.level}` }, `${r.level}: ${r.text}`))
  )
  $('sites').replaceChildren(...s.members.map((m) => siteCard(m, view.sites[m.key], now)))
  $('datasets').replaceChildren(...s.datasets.map((d) => datasetCard(d, view.datasets[d.id], now)))
}

const charts = {}

function chart(id, data, opts) {
  const box = $(id)
  if (!data || data.x.length === 0) {
    box.replaceChildren(el('p', { class: 'muted' }, 'No history yet: the node samples every few minutes.'))
    if (charts[id]) charts[id].destroy()
    charts[id] = null
    return
  }
  const aligned = [data.x, ...data.series.map((s) => s.values)]
  const palette = ['#0969da', '#cf222e', '#1a7f37', '#8250df', '#bf8700', '#1b7c83', '#d1242f', '#57606a']
  const series = [{}, ...data.series.map((s, i) => ({ label: s.label, stroke: palette[i % palette.length], ...opts }))]
  if (charts[id] && charts[id].series.length === series.length) {
    charts[id].setData(aligned)
    return
  }
  if (charts[id]) charts[id].destroy()
  box.replaceChildren()
  const size = { width: Math.min(1150, box.clientWidth || 800), height: 220 }
  charts[id] = new uPlot({ ...size, series }, aligned, box)
}

async function loadHistory() {
  try {
    const res = await fetch('api/history')
    if (!res.ok) return
    const h = await res.json()
    chart('lag-chart', h.lag, { width: 1 })
    chart('bytes-chart', h.daily, { width: 2, value: (_u, v) => bytes(v) })
  } catch {
    // The next try comes in a minute.
  }
}

function live() {
  const events = new EventSource('events')
  events.addEventListener('view', (e) => render(JSON.parse(e.data)))
  events.onerror = () => {
    $('meta').textContent = 'Lost the connection to the node; trying again…'
  }
}

fetch('api/view')
  .then((r) => r.json())
  .then(render)
  .catch(() => {})
live()
loadHistory()
setInterval(loadHistory, 60000)
