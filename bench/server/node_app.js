// The Node side of bench/server/run: the same three routes on Node's http module.
const http = require('http');
const UP = process.env.UPSTREAM || 'http://127.0.0.1:8090';
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
function get(path) {
  return new Promise((resolve, reject) => {
    http.get(UP + path, { agent }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => resolve(JSON.parse(Buffer.concat(parts).toString())));
    }).on('error', reject);
  });
}
http.createServer(async (req, res) => {
  if (req.url === '/hello') {
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end('Hello, world!');
  } else if (req.url === '/json') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ message: 'Hello, world!', n: 42, ok: true }));
  } else if (req.url === '/summary') {
    const [posts, users] = await Promise.all([get('/posts'), get('/users')]);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ post_count: posts.length, user_count: users.length }));
  } else { res.writeHead(404); res.end(); }
}).listen(+process.env.PORT, '127.0.0.1', () => console.log('READY ' + process.env.PORT));
