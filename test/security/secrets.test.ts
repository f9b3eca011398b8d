import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachDriver } from '../helpers/db.js';
import { expectTypedError, testApp, waitRun, type TestApp } from '../helpers/app.js';
import { Keyring } from '../../src/core/sealed.js';
import { createHash } from 'node:crypto';
import { canonicalJson } from '../../src/core/hash.js';

/** The value no answer, log or evidence may ever hold. */
const SECRET = 'sk-cairn-test-5f1e8a0b9c2d';

describeEachDriver('secrets and variables, attached', ({ db }) => {
  let t: TestApp;
  let c: Awaited<ReturnType<TestApp['circle']>>;
  const op = (slug: string, name: string) => `/api/${c.slug}/${slug}/ops/${name}`;
  beforeAll(async () => {
    t = await testApp(db());
    c = await t.circle('vault');
  });
  afterAll(() => t.close());

  it('seals a secret at rest, shows it never, and keeps apply idempotent', async () => {
    const made = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'secret', slug: 'api-token', spec: { value: SECRET } },
      c.tokens.admin,
    );
    expect(made.status).toBe(201);
    expect(made.body.spec.value).toEqual({ $sealed: 'redacted' });
    expect(JSON.stringify(made.body)).not.toContain(SECRET);
    // At rest: the row holds a v1 box, not the value.
    const raw = await db().query<{ spec: any }>(
      `SELECT spec FROM cairn.elements WHERE slug = 'api-token' AND circle_id = $1`,
      [c.id],
    );
    expect(JSON.stringify(raw.rows[0]!.spec)).not.toContain(SECRET);
    expect(raw.rows[0]!.spec.value.$sealed).toMatch(/^v1\./);
    const versions = await db().query<{ spec: any }>(
      `SELECT v.spec FROM cairn.element_versions v JOIN cairn.elements e ON e.id = v.element_id WHERE e.slug = 'api-token'`,
    );
    expect(JSON.stringify(versions.rows)).not.toContain(SECRET);
    // Applying the same value again changes nothing (the digest, not the random IV, is hashed).
    const again = await t.call(
      'POST',
      `/api/${c.slug}/ops/apply`,
      { element_type: 'secret', slug: 'api-token', spec: { value: SECRET } },
      c.tokens.admin,
    );
    expect(again.status).toBe(200);
    expect(again.body.action).toBe('unchanged');
    const hist = await t.call('GET', `${op('api-token', 'version')}?history=true`, undefined, c.tokens.read);
    expect(JSON.stringify(hist.body)).not.toContain(SECRET);
    expect(hist.body.versions[0].spec.value).toEqual({ $sealed: 'redacted' });
  });

  it('refuses a sealed box in a request, and a too-short secret', async () => {
    const box = await db().query<{ spec: any }>(
      `SELECT spec FROM cairn.elements WHERE slug = 'api-token' AND circle_id = $1`,
      [c.id],
    );
    const forged = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'secret', slug: 'copied', spec: { value: box.rows[0]!.spec.value } },
      c.tokens.admin,
    );
    expect(forged.status).toBe(400);
    expectTypedError(forged.body);
    expect(forged.body.error.code).toBe('SEALED_VALUE_REFUSED');
    const short = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'secret', slug: 'short', spec: { value: 'ab' } },
      c.tokens.admin,
    );
    expect(short.status).toBe(400);
    expect(short.body.error.code).toBe('INVALID_SPEC');
  });

  it('a box of one circle does not open in another', () => {
    const k = new Keyring(Keyring.generateKey());
    const b = k.seal(SECRET, 'circle-a');
    expect(k.open(b, 'circle-a')).toBe(SECRET);
    expect(() => k.open(b, 'circle-b')).toThrow(/could not be opened/);
  });

  it('a rotated key re-seals: the old key opens nothing afterwards, the value is the same', () => {
    const oldKey = Keyring.generateKey();
    const before = new Keyring(oldKey);
    const box = before.seal(SECRET, 'c');
    const during = new Keyring(Keyring.generateKey(), [oldKey]);
    const resealed = during.reseal(box, 'c');
    expect(resealed.digest).toBe(box.digest);
    expect(Keyring.keyIdOfBox(resealed)).toBe(during.currentId);
    expect(new Keyring(Keyring.generateKey(), []).currentId).not.toBe(during.currentId);
    const after = new Keyring((during as any).keys.get(during.currentId));
    expect(after.open(resealed, 'c')).toBe(SECRET);
    expect(() => new Keyring(oldKey).open(resealed, 'c')).toThrow(/does not hold/);
  });

  it('attaches a secret and a variable to a python function: its environment has them, its records do not', async () => {
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'variable', slug: 'region', spec: { value: 'eu-north-1' } },
      c.tokens.write,
    );
    const fn = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      {
        element_type: 'python',
        slug: 'leaky',
        spec: {
          source: {
            code:
              'import os, sys\n' +
              'def handler(input):\n' +
              '    tok = os.environ.get("API_TOKEN", "")\n' +
              '    print("token is " + tok)\n' +
              '    print("to stderr " + tok, file=sys.stderr)\n' +
              '    if input.get("fail"):\n' +
              '        raise ValueError("bad token " + tok)\n' +
              '    return {"token": tok, "region": os.environ.get("REGION"), "len": len(tok)}\n',
          },
        },
      },
      c.tokens.write,
    );
    expect(fn.status).toBe(201);
    const a1 = await t.call('POST', op('api-token', 'attach'), { target_id: 'leaky' }, c.tokens.execute);
    expect(a1.status).toBe(201);
    expect(a1.body).toMatchObject({ name: 'API_TOKEN', modifier_type: 'secret', is_modifier: false });
    const a2 = await t.call(
      'POST',
      op('region', 'attach'),
      { target_id: fn.body.id, priority: 5 },
      c.tokens.execute,
    );
    expect(a2.status).toBe(201);
    const list = await t.call('GET', op('leaky', 'attachments'), undefined, c.tokens.read);
    expect(list.body.attachments.map((a: any) => a.name)).toEqual(['REGION', 'API_TOKEN']);
    const targets = await t.call('GET', op('api-token', 'targets'), undefined, c.tokens.read);
    expect(targets.body.targets.map((a: any) => a.target_slug)).toEqual(['leaky']);

    const ok = await t.call('POST', op('leaky', 'invoke'), {}, c.tokens.execute);
    expect(ok.status).toBe(200);
    // The process saw the value (its length), the run records only the scrubbed form.
    expect(ok.body.output).toEqual({ token: '[secret:api-token]', region: 'eu-north-1', len: SECRET.length });
    const bad = await t.call('POST', op('leaky', 'invoke'), { fail: true }, c.tokens.execute);
    expect(bad.body.error.message).toContain('[secret:api-token]');
    for (const run of [ok.body, bad.body]) {
      const id = run.run_id;
      for (const path of [
        `/api/runs/${id}`,
        `/api/runs/${id}/items`,
        `/api/runs/${id}/audit`,
        `/api/runs/${id}/logs`,
      ]) {
        const r = await t.call('GET', path, undefined, c.tokens.read);
        expect(r.status, path).toBe(200);
        expect(JSON.stringify(r.body), path).not.toContain(SECRET);
      }
      const logs = await t.call('GET', `/api/runs/${id}/logs`, undefined, c.tokens.read);
      expect(JSON.stringify(logs.body)).toContain('token is [secret:api-token]');
    }
    // Hashes are of what the run records, never an oracle for the value (sha256 of the raw stdout).
    const items = await t.call('GET', `/api/runs/${ok.body.run_id}/items`, undefined, c.tokens.read);
    const ev = items.body.items[0].evidence;
    const sha = (x: string) => 'sha256:' + createHash('sha256').update(x).digest('hex');
    expect(ev.stdout.sha256).toBe(sha('token is [secret:api-token]\n'));
    expect(ev.stdout.sha256).not.toBe(sha(`token is ${SECRET}\n`));
    expect(ev.output_hashes.output).toBe(
      sha(canonicalJson({ len: SECRET.length, region: 'eu-north-1', token: '[secret:api-token]' })),
    );
    // The snapshot pins the attachment's version, never its value.
    const snap = await t.call('GET', `/api/runs/${ok.body.run_id}/snapshot`, undefined, c.tokens.read);
    expect(snap.status).toBe(200);
    expect(JSON.stringify(snap.body)).not.toContain(SECRET);
    expect(snap.body.snapshot?.element?.attachments ?? snap.body.element?.attachments).toEqual([
      expect.objectContaining({
        name: 'REGION',
        modifier: expect.objectContaining({ slug: 'region', version: 1 }),
      }),
      expect.objectContaining({
        name: 'API_TOKEN',
        modifier: expect.objectContaining({ slug: 'api-token', version: 1 }),
      }),
    ]);
    // Nothing in the database's run records holds it either.
    const everywhere = await db().query<{ n: number }>(
      `SELECT count(*)::int AS n FROM (
         SELECT r::text AS t FROM cairn.runs r UNION ALL SELECT i::text FROM cairn.items i
         UNION ALL SELECT e::text FROM cairn.run_events e UNION ALL SELECT l::text FROM cairn.live_events l
         UNION ALL SELECT s::text FROM cairn.snapshots s) x WHERE t LIKE '%' || $1 || '%'`,
      [SECRET],
    );
    expect(everywhere.rows[0]!.n).toBe(0);
  });

  it('refuses an attachment a type does not accept, a bad name, and a duplicate', async () => {
    await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'sql', slug: 'q', spec: { query: 'select 1 as one' } },
      c.tokens.write,
    );
    const noSql = await t.call('POST', op('api-token', 'attach'), { target_id: 'q' }, c.tokens.execute);
    expect(noSql.status).toBe(400);
    expectTypedError(noSql.body);
    expect(noSql.body.error.code).toBe('ATTACHMENT_NOT_ACCEPTED');
    const notMod = await t.call('POST', op('q', 'attach'), { target_id: 'leaky' }, c.tokens.execute);
    expect(notMod.body.error.code).toBe('NOT_ATTACHABLE');
    const badName = await t.call(
      'POST',
      op('region', 'attach'),
      { target_id: 'q', name: 'x' },
      c.tokens.execute,
    );
    expect(badName.status).toBe(400);
    const reserved = await t.call('POST', op('api-token', 'compose'), {}, c.tokens.execute);
    expect(reserved.status).toBe(200);
    const pathName = await t.call(
      'POST',
      op('leaky', 'compose'),
      { add: [{ ref: 'region', name: 'PATH' }] },
      c.tokens.execute,
    );
    expect(pathName.status).toBe(400);
    const dup = await t.call('POST', op('api-token', 'attach'), { target_id: 'leaky' }, c.tokens.execute);
    expect(dup.status).toBe(409);
    expect(dup.body.error.code).toBe('ATTACHMENT_EXISTS');
  });

  it('compose is atomic: one refused entry changes nothing', async () => {
    const before = await t.call('GET', op('leaky', 'attachments'), undefined, c.tokens.read);
    const region = before.body.attachments.find((a: any) => a.name === 'REGION');
    const r = await t.call(
      'POST',
      op('leaky', 'compose'),
      { remove: [{ attachment_id: region.attachment_id }], add: [{ ref: 'q' }] },
      c.tokens.execute,
    );
    expect(r.status).toBe(400);
    const after = await t.call('GET', op('leaky', 'attachments'), undefined, c.tokens.read);
    expect(after.body.attachments).toEqual(before.body.attachments);
    // A pinned version via ref@vN, and remove-modifier.
    await t.call('PATCH', op('region', 'update'), { spec: { value: 'us-east-2' } }, c.tokens.write);
    const swap = await t.call(
      'POST',
      op('leaky', 'compose'),
      { remove: [{ attachment_id: region.attachment_id }], add: [{ ref: 'region@v1', priority: 1 }] },
      c.tokens.execute,
    );
    expect(swap.status).toBe(200);
    expect(swap.body.added[0]).toMatchObject({ version_pin: 1, version: 1, priority: 1 });
    const pinned = await t.call('POST', op('leaky', 'invoke'), {}, c.tokens.execute);
    expect(pinned.body.output.region).toBe('eu-north-1');
    const gone = await t.call(
      'POST',
      op('leaky', 'remove-modifier'),
      { attachment_id: swap.body.added[0].attachment_id },
      c.tokens.execute,
    );
    expect(gone.status).toBe(200);
    const attached = await t.call('GET', op('leaky', 'attached'), undefined, c.tokens.read);
    expect(attached.body.elements.map((e: any) => e.slug)).toEqual(['api-token']);
    const noRegion = await t.call('POST', op('leaky', 'invoke'), {}, c.tokens.execute);
    expect(noRegion.body.output.region).toBeNull();
  });

  it('only a circle admin defines a secret, only execute attaches; a patch cannot reach into a sealed value', async () => {
    const byWriter = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'secret', slug: 'w-secret', spec: { value: 'writer-secret' } },
      c.tokens.write,
    );
    expect(byWriter.status).toBe(403);
    const attachByWriter = await t.call(
      'POST',
      op('region', 'attach'),
      { target_id: 'leaky' },
      c.tokens.write,
    );
    expect(attachByWriter.status).toBe(403);
    const forged = await t.call(
      'PATCH',
      op('api-token', 'update'),
      { spec: { value: { digest: 'f'.repeat(32) } } },
      c.tokens.admin,
    );
    expect(forged.status).toBe(400);
    expect(forged.body.error.code).toBe('SEALED_VALUE_REFUSED');
    const huge = await t.call(
      'POST',
      `/api/${c.slug}/ops/create`,
      { element_type: 'variable', slug: 'huge', spec: { value: 'x'.repeat(70_000) } },
      c.tokens.write,
    );
    expect(huge.status).toBe(400);
  });

  it('a replay uses the attachments its run pinned; a deleted secret opens no more', async () => {
    const first = await t.call('POST', op('leaky', 'invoke'), {}, c.tokens.execute);
    expect(first.body.output.token).toBe('[secret:api-token]');
    const again = await t.call(
      'POST',
      `/api/runs/${first.body.run_id}/replay`,
      { policy: 'permissive' },
      c.tokens.execute,
    );
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    const replayed = await waitRun(t, again.body.run_id, c.tokens.read);
    expect(replayed.output.token).toBe('[secret:api-token]');
    const del = await t.call(
      'DELETE',
      `${op('api-token', 'delete')}?confirm=true`,
      undefined,
      c.tokens.admin,
    );
    expect(del.status, JSON.stringify(del.body)).toBe(200);
    // Deleted: detached from today's runs, and refused to the runs that pinned it.
    const now = await t.call('POST', op('leaky', 'invoke'), {}, c.tokens.execute);
    expect(now.body.output.token).toBe('');
    const late = await t.call(
      'POST',
      `/api/runs/${first.body.run_id}/replay`,
      { policy: 'permissive' },
      c.tokens.execute,
    );
    const failed = await waitRun(t, late.body.run_id, c.tokens.read);
    expect(failed.status).toBe('failed');
    expect(failed.error.code).toBe('ATTACHMENT_UNAVAILABLE');
  });
});
