import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import { mesh } from './helpers/mesh.ts'

test(
  '`mesh demo` runs three sites that protect each other, loses one, fails over to another, fences the ' +
    'lost one when it returns, and exits 0 only when every copy equals its current origin',
  async () => {
    const before = new Set(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('branchmesh-demo-')))
    const r = await mesh(['demo'], { timeoutMs: 240_000 })
    const all = r.stdout + r.stderr
    assert.equal(r.code, 0, all)
    // The loss: shop-east's node is killed and its till sells while cut off.
    assert.match(r.stdout, /shop-east's node is killed on the spot \(SIGKILL/, all)
    assert.match(r.stdout, /OFF +\d+ orders +\d+ unsent/, all)
    // The promotion at shop-north, the path it printed, and the new till writing there.
    assert.match(r.stdout, /shop-north is the origin of shop-east now \(epoch 1\)/, all)
    assert.match(r.stdout, /^ {5}\S*[/\\]north[/\\]mesh[/\\]replicas[/\\]shop-east-shop-east-[0-9a-f]{8}\.db$/m, all)
    assert.match(r.stdout, /@north e1 \d\/\d ✓/, all)
    const follows = new RegExp(
      /shop-south's node follows by itself: its status says shop-east has origin shop-north, epoch 1, /.source +
        /and it has applied (\d+) of (\d+) entr(y|ies)\./.source
    ).exec(r.stdout)
    assert.ok(follows, all)
    // One numbering: what it applied and the log's length are counted the same way (never "applied 16 of 15").
    assert.ok(Number(follows[1]) <= Number(follows[2]), follows[0])
    // The fence: the offline changes kept in a divergence folder, with its four files.
    const fence = new RegExp(
      /kept aside the (\d+) row changes? its till made while cut off \(6 transactions\), in\n +/.source +
        /east[/\\]mesh[/\\]divergence[/\\]shop-east-epoch0-\d{8}T\d{6}[/\\] +/.source +
        /\(README\.txt, before\.db, changes\.jsonl, changes\.sql\)/.source
    ).exec(r.stdout)
    assert.ok(fence, all)
    assert.ok(Number(fence[1]) > 0)
    // The checks: 6 copies against their current origin (shop-east's own database included) and the divergence.
    assert.match(
      r.stdout,
      /shop-east's data held at shop-south \(origin shop-north\): +identical \(3 tables, \d+ rows\)/,
      all
    )
    assert.match(
      r.stdout,
      /shop-east's data at shop-east itself \(origin shop-north\): +identical \(3 tables, \d+ rows\)/,
      all
    )
    assert.match(
      r.stdout,
      new RegExp(`the rows in changes\\.jsonl: +the same ${fence[1]} rows, none missing, none extra`),
      all
    )
    assert.match(
      r.stdout,
      /changes\.sql replayed onto its data as it went dark: +gives its database as the till left it/,
      all
    )
    assert.match(r.stdout, /before\.db: +is its database as the till left it/, all)
    assert.equal((r.stdout.match(/: +identical \(3 tables, \d+ rows\)$/gm) ?? []).length, 8, all)
    assert.match(
      r.stdout,
      /^PASS: every copy of every shop's data is identical to its current origin, row by row \(6 copies checked\)/m,
      all
    )
    assert.match(
      r.stdout,
      new RegExp(`holds exactly the ${fence[1]} rows its till changed while cut off \\(6 transactions\\)`),
      all
    )
    const left = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('branchmesh-demo-') && !before.has(n))
    assert.deepEqual(left, [], 'the demo removed its temporary folder')
  }
)
