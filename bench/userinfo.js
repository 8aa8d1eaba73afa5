// The authentication manager of the load benchmark (scripts/bench-load.sh): a user-info endpoint
// that counts its calls, so the benchmark can report how many Checks reached it.
//
//   node bench/userinfo.js PORT [--delay-ms N] [--echo] [--soak] [--jwks FILE]
//
// Every GET with a bearer credential answers 200
// {"sub":"alice","groups":["admin"],"permissions":["api.users.get"]} after --delay-ms milliseconds
// (default 0). With --echo the sub is the bearer token itself, so that N distinct tokens are N
// distinct users (the cache-memory run). --soak (scripts/soak.sh, tests/soak.rs) implies --echo
// and fails some credentials on purpose, by prefix: `fail-...` answers 500 (an identity-provider
// error) and `reject-...` answers 401 (a credential the provider does not know); the counts go
// to /__count as "failed" and "rejected". A request without a bearer credential answers 401 {}.
// GET /__count answers {"calls":N} and is not counted. With --jwks, GET /jwks answers the
// contents of FILE (the keys of a checkpoint with a local `jwt` source), counted apart:
// {"calls":N,"jwks":M}. Listens on 127.0.0.1 only.
'use strict';
const http = require('http');

const args = process.argv.slice(2);
const port = Number(args[0]);
let delayMs = 0;
let echo = false;
let soak = false;
let jwksFile = null;
for (let i = 1; i < args.length; i++) {
  if (args[i] === '--delay-ms') delayMs = Number(args[++i]);
  else if (args[i] === '--echo') echo = true;
  else if (args[i] === '--soak') { soak = true; echo = true; }
  else if (args[i] === '--jwks') jwksFile = args[++i];
  else { console.error(`userinfo.js: unknown option ${args[i]}`); process.exit(2); }
}
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node bench/userinfo.js PORT [--delay-ms N] [--echo] [--soak] [--jwks FILE]');
  process.exit(2);
}

let calls = 0;
let jwksCalls = 0;
let failed = 0;
let rejected = 0;
const jwks = jwksFile === null ? null : require('fs').readFileSync(jwksFile);
const fixed = JSON.stringify({ sub: 'alice', groups: ['admin'], permissions: ['api.users.get'] });

const server = http.createServer((req, res) => {
  if (req.url === '/__count') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ calls, jwks: jwksCalls, failed, rejected }));
    return;
  }
  if (jwks !== null && req.url === '/jwks') {
    jwksCalls++;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': jwks.length });
    res.end(jwks);
    return;
  }
  calls++;
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('Bearer ')) {
    // No credential: nobody, as an authentication manager answers.
    res.writeHead(401, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
    return;
  }
  if (soak && auth.startsWith('Bearer fail-')) {
    failed++;
    res.writeHead(500, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
    return;
  }
  if (soak && auth.startsWith('Bearer reject-')) {
    rejected++;
    res.writeHead(401, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
    return;
  }
  let body = fixed;
  if (echo) {
    const sub = auth.slice(7);
    body = JSON.stringify({ sub, groups: ['admin'], permissions: ['api.users.get'] });
  }
  const answer = () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (delayMs > 0) setTimeout(answer, delayMs); else answer();
});
// checkpoint keeps its connections to user-info in a pool for 60 s: never close them first, or a
// Check could pick a connection the server is closing and fail.
server.keepAliveTimeout = 300000;
server.headersTimeout = 301000;
server.maxHeadersCount = 0;
server.listen(port, '127.0.0.1');
