// node-postgres everyday tasks through the breakglass gateway; prints one JSON object.
// Usage: node compat.js PORT TOKEN CA_FILE
const fs = require('fs');
const { Pool, Client } = require('pg');

const [port, token, caFile] = process.argv.slice(2);
const base = {
  host: '127.0.0.1',
  port: Number(port),
  user: 'erin',
  password: token,
  database: 'shop',
  ssl: { ca: fs.readFileSync(caFile, 'utf8') },
};

async function outcome(fn) {
  try {
    return { ok: await fn() };
  } catch (e) {
    return { error: e.code || String(e.message || e) };
  }
}

async function main() {
  const out = {};
  // Pool: concurrent queries over a few connections; release and reuse them
  const pool = new Pool({ ...base, max: 3 });
  const counts = await Promise.all(
    Array.from({ length: 9 }, (_, i) =>
      pool.query('select count(*)::int as n from customers where id > $1', [i]).then((r) => r.rows[0].n)),
  );
  out.pool = counts;
  const client = await pool.connect();
  out.poolWrite = await outcome(async () => {
    await client.query('begin');
    try {
      const r = await client.query('update customers set name = name where id = $1', [5]);
      return r.rowCount;
    } finally {
      await client.query('rollback');
    }
  });
  client.release();
  await pool.end();

  // statement_timeout: node-postgres sends it as a startup parameter
  const c = new Client({ ...base, statement_timeout: 300 });
  await c.connect();
  out.statementTimeoutSetting = (await c.query('show statement_timeout')).rows[0].statement_timeout;
  out.statementTimeout = await outcome(async () => {
    await c.query('select pg_sleep(3)');
    return 'finished';
  });
  out.afterTimeout = (await c.query('select 1 as one')).rows[0].one;
  await c.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ fatal: e.code || String(e.message || e) }));
  process.exit(1);
});
