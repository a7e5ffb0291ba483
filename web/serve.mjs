// Serves web/dist on 127.0.0.1 (a secure context, as WebGPU needs) with the MIME types the
// page needs: application/wasm lets the browser compile the module while it downloads.
// Usage: node web/serve.mjs [--port 8080] [--root web/dist]; the tests import serve().
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.jpg': 'image/jpeg',
  '.png': 'image/png',
};

// Starts a server for `root` on `port` (0: any free one); resolves to its base URL and the server.
export async function serve(root, port = 0) {
  const base = path.resolve(root);
  const server = http.createServer((req, res) => {
    const wanted = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = path.join(base, wanted.endsWith('/') ? `${wanted}index.html` : wanted);
    // Nothing outside the root, whatever the path says.
    if (!file.startsWith(base + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, server };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : fallback);
  const root = arg('--root', 'web/dist');
  if (!fs.existsSync(path.join(root, 'index.html'))) {
    console.error(`${root}/index.html is missing: build the page first with bash tools/web-build.sh`);
    process.exit(1);
  }
  const { url } = await serve(root, Number(arg('--port', process.env.PORT || 8080)));
  console.log(`mien's page at ${url} (Chromium on Linux needs --enable-unsafe-webgpu); Ctrl-C stops it`);
}
