// Browser driver for the Rust tests (smart_vod::browser): Debian's chromium through
// playwright-core, spoken to as JSON lines on stdin/stdout.
//
//   -> {"id":1,"op":"goto","url":"http://..."}          <- {"id":1,"ok":true}
//   -> {"id":2,"op":"eval","expr":"window.smartPlayer"}  <- {"id":2,"ok":true,"value":{...}}
//   -> {"id":3,"op":"screenshot","path":"/tmp/p.png"}    <- {"id":3,"ok":true}
//   -> {"id":4,"op":"close"}                             <- {"id":4,"ok":true}
// Failures answer {"id":n,"ok":false,"error":"..."}. The first line out is
// {"ready":true,"version":"<chromium version>"}. Console messages and page errors go to
// stderr. End of stdin closes the browser.
//
// Chromium runs headless with the flags this machine needs: no sandbox (tests run as root),
// no GPU, and no background networking (the machine has no outside network; Chromium's
// own update, sync and QUIC probes would only fail). Autoplay is allowed without a gesture.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const reply = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const browser = await chromium.launch({
  executablePath: process.env.SMART_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
const page = await browser.newPage({ viewport: { width: 960, height: 900 } });
page.on('console', (m) => process.stderr.write(`console.${m.type()}: ${m.text()}\n`));
page.on('pageerror', (e) => process.stderr.write(`pageerror: ${e.message}\n`));
reply({ ready: true, version: browser.version() });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  let req;
  try {
    req = JSON.parse(line);
  } catch (_) {
    reply({ ok: false, error: 'bad json' });
    continue;
  }
  const id = req.id;
  try {
    switch (req.op) {
      case 'goto':
        await page.goto(req.url, { waitUntil: 'load', timeout: 20000 });
        reply({ id, ok: true });
        break;
      case 'eval':
        reply({ id, ok: true, value: await page.evaluate(req.expr) });
        break;
      case 'screenshot':
        await page.screenshot({ path: req.path });
        reply({ id, ok: true });
        break;
      case 'close':
        await browser.close();
        reply({ id, ok: true });
        process.exit(0);
        break;
      default:
        reply({ id, ok: false, error: `unknown op ${req.op}` });
    }
  } catch (e) {
    reply({ id, ok: false, error: String((e && e.message) || e) });
  }
}
await browser.close();
