// Places a call from the demo page in headless Chromium (Debian's /usr/bin/chromium, fake
// microphone), types an utterance as the bot, waits for utterance.done, and prints the
// browser's inbound-rtp figures as one JSON line. Usage: node demo_call.js URL TEXT
const { chromium } = require('playwright-core');

const [url, text] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  try {
    const page = await browser.newPage();
    await page.goto(url);
    await page.click('#call');
    await page.waitForFunction(() => document.getElementById('state').textContent === 'connected', null, { timeout: 15000 });
    await page.fill('#say', text);
    await page.click('#send');
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('"utterance.done"'), null, { timeout: 20000 });
    // utterance.done: the last frame went into the call. Wait for the packets in flight on
    // RTP, not on the clock: until 10 more have arrived than had at utterance.done (polled
    // every 10 ms, 10 s guard).
    const received = () => page.evaluate(async () => {
      let n = 0;
      (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp') n = r.packetsReceived; });
      return n;
    });
    const atDone = await received();
    const deadline = Date.now() + 10000;
    for (let n = atDone; n < atDone + 10; n = await received()) {
      if (Date.now() > deadline) throw new Error(`inbound packets stuck at ${n} (${atDone} at utterance.done)`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const stats = await page.evaluate(async () => {
      const out = {};
      (await pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp') {
          Object.assign(out, {
            packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, jitter: r.jitter,
            totalAudioEnergy: r.totalAudioEnergy, totalSamplesReceived: r.totalSamplesReceived,
          });
        }
      });
      out.log = document.getElementById('log').textContent;
      return out;
    });
    await page.click('#hangup');
    console.log(JSON.stringify(stats));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
