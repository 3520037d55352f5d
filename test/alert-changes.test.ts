/**
 * Which verdict changes become alerts (alerts.ts diffReasons, pure): a reason counts once seen in two checks in a
 * row and clears once missing from two, a flap within one check is not sent, a figure that changes does not make
 * a reason new, and a site that is not the sender tells nothing but clears what it raised itself.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { chooseSender, diffReasons, type Reason, reasonKey, untoldSince } from '../node/index.ts'

const silent = (h: number) => ({ level: 'CRIT' as const, text: `south has not been heard from for ${h} hours` })
const disk = { level: 'WARN' as const, text: 'north has 1.2 GB free of 100.0 GB: free some space there' }

/** Runs checks in a row as one site, marking as told what it would send (as a delivered message does). */
function checks(sender: boolean[], seq: Array<Array<{ level: 'WARN' | 'CRIT'; text: string }>>, active = {}) {
  const state = { active: active as Record<string, Reason>, seen: new Set<string>(), missed: new Set<string>() }
  return seq.map((reasons, i) => {
    const d = diffReasons(state.active, state.seen, state.missed, reasons, sender[i] ?? sender[0])
    state.seen = d.seen
    state.missed = d.missed
    for (const r of d.raised) state.active[`${r.level} ${r.text.replace(/\d+(\.\d+)?/g, '#')}`] = { ...r, told: true }
    for (const r of d.cleared) delete state.active[`${r.level} ${r.text.replace(/\d+(\.\d+)?/g, '#')}`]
    return `${d.raised.map((r) => `+${r.level}`).join('')}${d.cleared.map((r) => `-${r.level}`).join('')}`
  })
}

test('a reason is raised once after two checks and cleared once after two; its figures changing is no change', () => {
  assert.deepEqual(checks([true], [[silent(17)], [silent(17)], [silent(18)], [silent(19)], [], [], []]), [
    '',
    '+CRIT',
    '',
    '',
    '',
    '-CRIT',
    ''
  ])
})

test('a reason that flaps for one check is not sent', () => {
  assert.deepEqual(checks([true], [[], [disk], [], [disk], []]), ['', '', '', '', ''])
  // Nor a gap of one check in one that stays.
  assert.deepEqual(checks([true], [[disk], [disk], [], [disk], [disk]]), ['', '+WARN', '', '', ''])
})

test('a site that is not the sender sends nothing, and clears only what it raised when it was', () => {
  assert.deepEqual(checks([false], [[disk], [disk], [], []]), ['', '', '', ''])
  // It raised the CRIT as the sender, then handed over: it still says it cleared.
  assert.deepEqual(checks([true, true, false, false, false], [[silent(1)], [silent(1)], [], [], []]), [
    '',
    '+CRIT',
    '',
    '-CRIT',
    ''
  ])
  // It took a raise as told while another sent; on taking over it does not send it again, nor its clearing.
  assert.deepEqual(checks([false, false, true, true, true], [[disk], [disk], [disk], [], []]), ['', '', '', '', ''])
})

test('one sender, alike everywhere: the named one, else an observer, else the lowest key; silent ones skipped', () => {
  const NOW = 1_000_000_000
  const m = (site: string, key: string, role: 'full' | 'blind' | 'observer', heardAgo: number | null) => ({
    site,
    key,
    role,
    self: false,
    connected: false,
    lastContact: heardAgo === null ? null : NOW - heardAgo,
    software: null,
    health: null
  })
  const members = [m('north', 'cc', 'full', 1000), m('south', 'aa', 'full', 1000), m('office', 'bb', 'observer', 1000)]
  const all = new Set(['aa', 'bb', 'cc'])
  const pick = (named?: string, can = all, list = members) => chooseSender(list, can, named, 300_000, NOW)
  assert.equal(pick(), 'office', 'the observer')
  assert.equal(pick('north'), 'north', 'the one named in config')
  assert.equal(pick(undefined, new Set(['aa', 'cc'])), 'south', 'no observer that can send: the lowest key')
  // The named sender and the observer fall silent: the next takes over.
  const silent = [
    m('north', 'cc', 'full', 600_000),
    m('south', 'aa', 'full', 1000),
    m('office', 'bb', 'observer', null)
  ]
  assert.equal(pick('north', all, silent), 'south')
  assert.equal(pick(undefined, all, [m('vault', 'a0', 'blind', 0), ...members.slice(0, 2)]), 'south', 'never blind')
  assert.equal(pick(undefined, new Set()), null, 'no site can send')
  // Just started after a long stop: nobody could be heard meanwhile, so the named one still sends until this site
  // has been up for the takeover time.
  const started = (ago: number) => chooseSender(silent, all, 'north', 300_000, NOW, NOW - ago)
  assert.equal(started(1000), 'north', 'a second after the start: the named one')
  assert.equal(started(300_000), 'south', 'up for the takeover time and still not heard: the next takes over')
})

test('a site that takes over sends what the silent sender may never have sent', () => {
  // shop-b sent; it was last heard from at 1000. shop-a recorded two reasons as told by shop-b: one at 900, while
  // shop-b was alive (it sent it), one at 5000, when shop-b was already silent (nobody sent it).
  const active: Record<string, Reason> = {}
  const disk = { level: 'WARN' as const, text: 'shop-c: disk 91 % full' }
  const silent = { level: 'CRIT' as const, text: 'shop-b has not been heard from for 6 s' }
  let seen = new Set<string>()
  for (const now of [800, 900]) seen = diffReasons(active, seen, new Set(), [disk], false, now).seen
  for (const now of [4900, 5000]) seen = diffReasons(active, seen, new Set(), [disk, silent], false, now).seen
  assert.deepEqual(
    Object.values(active).map((r) => [r.text, r.told, r.at]),
    [
      [disk.text, false, 900],
      [silent.text, false, 5000]
    ]
  )
  assert.deepEqual(
    untoldSince(active, 1000).map((r) => r.text),
    [silent.text],
    'only what came after shop-b was last heard from'
  )
  active[reasonKey(silent)] = { ...silent, told: true }
  assert.deepEqual(untoldSince(active, 1000), [], 'once sent, not again')
})
