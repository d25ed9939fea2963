'use strict';
// Calls URL three ways with Node's built-ins only, as an unmodified program would: https.get
// with the default Agent, https.get with a keep-alive Agent of its own, and fetch() (first
// building a Request, which loads Node's bundled undici before fetch does). It prints one JSON
// line {name: {status, body}} and knows nothing of proxies: `authproxy exec` arranges that.
const https = require('https');

const url = process.argv[2];

function get(options) {
  return new Promise((resolve, reject) => {
    https.get(url, options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body) }));
    }).on('error', reject);
  });
}

async function viaFetch() {
  const request = new Request(url, { headers: { accept: 'application/json' } });
  const res = await fetch(request);
  return { status: res.status, body: await res.json() };
}

(async () => {
  const agent = new https.Agent({ keepAlive: true });
  const out = {
    https_default_agent: await get({}),
    https_own_agent: await get({ agent }),
    fetch: await viaFetch(),
  };
  agent.destroy();
  console.log(JSON.stringify(out));
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
