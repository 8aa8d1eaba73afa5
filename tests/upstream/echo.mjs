// The upstream that shows the headers it received: a dependency-free Node HTTP server for the demo and the
// end-to-end tests. Every request gets 200 and a JSON body
//   {"method": "GET", "path": "/api/x?y=1", "headers": {"lower-case-name": "value", ...}}
// where `path` is the request target as received (query string included) and repeated headers are joined
// with ", " (Node's rule; set-cookie is joined the same way here). The request body is read and discarded.
//
// Environment:
//   ECHO_PORT  listen port on 127.0.0.1 (default 0 = a free port)
//   ECHO_HOST  listen address (default 127.0.0.1; only loopback addresses are accepted)
// Prints exactly one stdout line once listening:  ECHO_READY {"port":N}
// Stops on SIGTERM or SIGINT.
import * as http from 'node:http';

const HOST = process.env.ECHO_HOST || '127.0.0.1';
if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(HOST)) {
  console.error(`ECHO_HOST must be a loopback address, got ${HOST}`);
  process.exit(2);
}
const PORT = Number(process.env.ECHO_PORT || 0);

const server = http.createServer((req, res) => {
  const headers = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase();
    const value = req.rawHeaders[i + 1];
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  req.resume();
  req.on('end', () => {
    const body = JSON.stringify({ method: req.method, path: req.url, headers });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  });
});

server.once('error', (err) => {
  console.error(`echo: ${err.message}`);
  process.exit(1);
});
server.listen(PORT, HOST, () => {
  process.stdout.write(`ECHO_READY ${JSON.stringify({ port: server.address().port })}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
