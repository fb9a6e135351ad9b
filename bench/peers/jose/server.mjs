// The peer for bench/load.sh: a Node.js server doing what keygate's /authz does for a team key
// token, with the `jose` library: kid lookup, ES256 signature, iss, aud, exp, and a lifetime of
// at most 20 minutes; 200 with identity headers or 401. One worker per core (node:cluster),
// as a production Node deployment would run.
//
//   node server.mjs PORT KEY_ID ISSUER_ID PUBLIC_KEY.pem
import cluster from 'node:cluster';
import http from 'node:http';
import os from 'node:os';
import fs from 'node:fs';
import { importSPKI, jwtVerify, decodeProtectedHeader } from 'jose';

const [port, keyId, issuer, pemFile] = process.argv.slice(2);

if (cluster.isPrimary) {
  for (let i = 0; i < os.availableParallelism(); i++) cluster.fork();
  console.log(`jose peer listening on http://127.0.0.1:${port} (${os.availableParallelism()} workers)`);
} else {
  const keys = new Map([[keyId, await importSPKI(fs.readFileSync(pemFile, 'utf8'), 'ES256')]]);
  const deny = (res, why) => {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ status: '401', code: 'NOT_AUTHORIZED', detail: why }] }));
  };
  http.createServer(async (req, res) => {
    const auth = req.headers.authorization || '';
    if (!auth.startsWith('Bearer ')) return deny(res, 'missing');
    const token = auth.slice(7);
    try {
      const { kid } = decodeProtectedHeader(token);
      const key = keys.get(kid);
      if (!key) return deny(res, 'unknown key');
      const { payload } = await jwtVerify(token, key, {
        algorithms: ['ES256'], issuer, audience: 'keygate-v1', clockTolerance: 60,
        requiredClaims: ['exp'],
      });
      const issued = payload.iat ?? Math.floor(Date.now() / 1000);
      if (payload.exp - issued > 1200) return deny(res, 'lifetime too long');
      res.writeHead(200, { 'x-keygate-key-id': kid, 'x-keygate-issuer-id': issuer });
      res.end();
    } catch (e) {
      deny(res, e.code || 'invalid');
    }
  }).listen(Number(port), '127.0.0.1');
}
