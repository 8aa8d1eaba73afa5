// checkpoint's test OpenID provider: a real, loopback-only OIDC provider (panva/oidc-provider from the npm
// registry) used by scripts/demo.sh and the end-to-end tests as the authentication manager behind USERINFO_URL.
// Install with `npm ci` (scripts/setup.sh).
//
// Users (fixtures.json; passwords are fixtures, not secrets):
//   alice / alice-password  groups admins, engineering; permissions orders:read, orders:write, users:admin;
//                           properties {department, tenant, employee_id}
//   bob   / bob-password    group viewers; permission orders:read
//   sam   / sam-password    no groups of its own; its access tokens carry what a broker issues after a SAML
//                           login (fixture `token_claims`: `idp`, `amr`, the SAML group attribute as `saml_groups`)
// Client: authz-service / authz-service-secret (client_secret_basic), grants password, client_credentials,
// authorization_code, refresh_token.
//
// Endpoints: /.well-known/openid-configuration, /token (incl. grant_type=password), /me (userinfo; a JSON object
// with sub, name, preferred_username, email, email_verified, groups, permissions, properties: claims follow the
// granted scopes), /jwks, /token/introspection, /token/revocation, and the test shim GET /test/cookie-userinfo
// (Cookie: idp_access_token=<opaque token>, same body as /me).
//
//   curl -s -u authz-service:authz-service-secret -d grant_type=password -d username=alice \
//        -d password=alice-password "$ISSUER/token"          # -> {"access_token": "...", ...}
//   curl -s -H "Authorization: Bearer $TOKEN" "$ISSUER/me"
//
// Environment:
//   IDP_HOST              listen address (default 127.0.0.1; only loopback addresses are accepted)
//   IDP_PORT              listen port (default 0 = pick a free port; the chosen one is printed)
//   IDP_READY_FILE        if set, {"issuer","port","pid","ready_ms"} is written there once the server is ready
//   IDP_FIXTURES          path of the users/clients fixture (default: fixtures.json beside this file)
//   IDP_ACCESS_TOKEN_TTL  seconds (default 3600); use e.g. 2 to test expiry
//   IDP_CLOCK_TOLERANCE   seconds of exp leeway at /me (default 0 here; oidc-provider's own default is 15)
//   IDP_KEYS_FILE         optional JSON {"keys":[private JWKs]}; default: fresh RS256 + ES256 keys per start
//   IDP_LOG=1             one stderr line per request
//
// On readiness it prints exactly one stdout line:
//   IDP_READY {"issuer":"http://127.0.0.1:PORT","port":PORT,"pid":PID,"ready_ms":N}
// The issuer has no trailing slash. Stop it with SIGTERM or SIGINT (exits 0 within about 20 ms).
// stderr carries oidc-provider's start-up warnings (Node 20 runtime, in-memory adapter, devInteractions): expected.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const started = process.hrtime.bigint();
const here = path.dirname(fileURLToPath(import.meta.url));

const HOST = process.env.IDP_HOST || '127.0.0.1';
if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(HOST)) {
  console.error(`IDP_HOST must be a loopback address, got ${HOST}`);
  process.exit(2);
}
const PORT = Number(process.env.IDP_PORT || 0);
const AT_TTL = Number(process.env.IDP_ACCESS_TOKEN_TTL || 3600);
// oidc-provider's default is 15 s of leeway, which lets /me accept a token up to 15 s past exp.
const CLOCK_TOLERANCE = Number(process.env.IDP_CLOCK_TOLERANCE || 0);
const LOG = process.env.IDP_LOG === '1';
const fixtures = JSON.parse(fs.readFileSync(process.env.IDP_FIXTURES || path.join(here, 'fixtures.json'), 'utf8'));

const users = new Map(fixtures.users.map((u) => [u.sub, u]));
const serviceClaims = new Map(fixtures.clients.map((c) => [c.client_id, c.service_claims || {}]));
const RS = fixtures.resource;

// ---- signing keys -----------------------------------------------------------------------------
function freshKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const stamp = Date.now().toString(36);
  return [
    { ...rsa, kid: `rs256-${stamp}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `es256-${stamp}`, alg: 'ES256', use: 'sig' },
  ];
}
const keys = process.env.IDP_KEYS_FILE
  ? JSON.parse(fs.readFileSync(process.env.IDP_KEYS_FILE, 'utf8')).keys
  : freshKeys();

// ---- accounts ---------------------------------------------------------------------------------
function userClaims(u) {
  return {
    sub: u.sub,
    name: u.name,
    preferred_username: u.preferred_username,
    email: u.email,
    email_verified: u.email_verified,
    groups: u.groups,
    permissions: u.permissions,
    properties: u.properties,
  };
}

async function findAccount(_ctx, id) {
  const u = users.get(id);
  if (!u) return undefined;
  return {
    accountId: u.sub,
    // oidc-provider masks these by the granted scopes / claims (see `claims` below).
    async claims() { return userClaims(u); },
  };
}

// ---- resource server (JWT access tokens) -----------------------------------------------------
async function getResourceServerInfo(_ctx, indicator) {
  if (indicator !== RS.indicator) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
  return {
    audience: RS.audience,
    scope: RS.scope,
    accessTokenFormat: RS.accessTokenFormat, // 'jwt' -> RFC 9068 "at+jwt"
    accessTokenTTL: AT_TTL,
    jwt: { sign: { alg: RS.alg } },
  };
}

// ---- listen first, so that IDP_PORT=0 yields the issuer ---------------------------------------
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, resolve);
});
const { port } = server.address();
const hostForUrl = HOST.includes(':') ? `[${HOST}]` : HOST;
const issuer = `http://${hostForUrl}:${port}`;

const provider = new Provider(issuer, {
  clients: fixtures.clients.map(({ service_claims: _ignored, ...c }) => c),
  jwks: { keys },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    permissions: ['permissions'],
    properties: ['properties'],
  },
  scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
  // Claims copied into access tokens: the JWT payload for JWT tokens, the introspection response for opaque ones.
  async extraTokenClaims(_ctx, token) {
    if (token.accountId) {
      const u = users.get(token.accountId);
      // `token_claims`: what a broker adds for a user it federates (e.g. a SAML login's attributes).
      return u ? { groups: u.groups, permissions: u.permissions, properties: u.properties, ...u.token_claims } : undefined;
    }
    const sc = serviceClaims.get(token.clientId);
    return sc && Object.keys(sc).length ? sc : undefined;
  },
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    devInteractions: { enabled: true }, // built-in login/consent pages: any password for a known user id
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      getResourceServerInfo,
      useGrantedResource: async () => true,
    },
  },
  ttl: {
    AccessToken: () => AT_TTL,
    ClientCredentials: () => AT_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
  },
  clockTolerance: CLOCK_TOLERANCE,
  cookies: { keys: ['authz-test-idp-cookie-key-not-a-secret'] },
  // keep refresh tokens off unless offline_access is asked for
  issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
});

// ---- resource owner password credentials grant (RFC 6749 §4.3), for non-interactive user tokens ----
const OIDC_SCOPES = new Set(['openid', 'profile', 'email', 'groups', 'permissions', 'properties']);
provider.registerGrantType('password', async (ctx) => {
  const { params, client } = ctx.oidc;
  if (!params.username || !params.password) throw new errors.InvalidRequest('username and password are required');
  const u = users.get(params.username);
  if (!u || !crypto.timingSafeEqual(
    crypto.createHash('sha256').update(String(params.password)).digest(),
    crypto.createHash('sha256').update(u.password).digest(),
  )) {
    throw new errors.InvalidGrant('invalid resource owner credentials');
  }
  const requested = (params.scope || 'openid profile email groups permissions properties').split(' ').filter(Boolean);
  const allowed = new Set((client.scope || '').split(' '));
  for (const s of requested) {
    if (!allowed.has(s)) throw new errors.InvalidScope('requested scope is not allowed', s);
  }
  const resources = params.resource ? [].concat(params.resource) : [];
  if (resources.length > 1) throw new errors.InvalidTarget('only one resource indicator is supported');
  const resource = resources[0];

  const account = await findAccount(ctx, u.sub);
  const grant = new provider.Grant({ accountId: u.sub, clientId: client.clientId });
  const oidcScopes = requested.filter((s) => OIDC_SCOPES.has(s));
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));

  const at = new provider.AccessToken({ accountId: u.sub, client, gty: 'password' });
  let rsScopes = [];
  if (resource) {
    const info = await getResourceServerInfo(ctx, resource, client);
    rsScopes = requested.filter((s) => info.scope.split(' ').includes(s));
    if (rsScopes.length) grant.addResourceScope(resource, rsScopes.join(' '));
    at.resourceServer = new provider.ResourceServer(resource, info);
    at.scope = rsScopes.join(' ') || undefined;
  } else {
    at.scope = oidcScopes.join(' ') || undefined; // userinfo-bound, opaque
  }
  at.grantId = await grant.save();

  ctx.oidc.entity('Account', account);
  ctx.oidc.entity('Grant', grant);
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();

  let idToken;
  if (oidcScopes.includes('openid')) {
    const idt = new provider.IdToken({
      ...(await account.claims('id_token', oidcScopes.join(' '), {}, [])),
      auth_time: Math.floor(Date.now() / 1000),
      amr: ['pwd'],
    }, { ctx });
    idt.scope = oidcScopes.join(' ');
    idToken = await idt.issue({ use: 'idtoken' });
  }

  ctx.body = {
    access_token: accessToken,
    token_type: at.tokenType,
    expires_in: at.expiration,
    scope: at.scope,
    ...(idToken ? { id_token: idToken } : {}),
  };
}, ['username', 'password', 'scope', 'resource'], ['resource']);

// ---- test-only shim: "user-info by cookie" ------------------------------------------------------
// OIDC userinfo only takes bearer tokens. To exercise an adapter that forwards the Cookie header,
// GET /test/cookie-userinfo with `Cookie: idp_access_token=<opaque access token>` returns the same
// scope-filtered claims as /me, validated against the provider's real token store.
provider.use(async (ctx, next) => {
  const t0 = Date.now();
  if (ctx.path === '/test/cookie-userinfo' && ctx.method === 'GET') {
    const value = ctx.cookies.get('idp_access_token');
    const at = value && await provider.AccessToken.find(value);
    if (!at || at.isExpired || at.aud !== undefined || !at.scopes.has('openid')) {
      ctx.status = 401;
      ctx.set('WWW-Authenticate', 'Cookie realm="authz-test-idp", error="invalid_token"');
      ctx.body = { error: 'invalid_token' };
    } else {
      const u = users.get(at.accountId);
      const all = userClaims(u);
      const cfg = { openid: ['sub'], profile: ['name', 'preferred_username'], email: ['email', 'email_verified'], groups: ['groups'], permissions: ['permissions'], properties: ['properties'] };
      const body = {};
      for (const s of at.scopes) for (const c of cfg[s] || []) if (all[c] !== undefined) body[c] = all[c];
      ctx.body = body;
    }
  } else {
    await next();
  }
  if (LOG) console.error(`[idp] ${ctx.method} ${ctx.path} -> ${ctx.status} (${Date.now() - t0} ms)`);
});

server.on('request', provider.callback());

const readyMs = Number(process.hrtime.bigint() - started) / 1e6;
const ready = { issuer, port, pid: process.pid, ready_ms: Math.round(readyMs) };
if (process.env.IDP_READY_FILE) fs.writeFileSync(process.env.IDP_READY_FILE, JSON.stringify(ready));
process.stdout.write(`IDP_READY ${JSON.stringify(ready)}\n`);

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections(); // drop keep-alive sockets so shutdown is immediate
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
