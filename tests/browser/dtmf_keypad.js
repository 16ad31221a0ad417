// Presses 1, 2, # on the demo page's keypad in headless BROWSER (chromium or firefox, Debian's;
// see common.js):
// the browser sends them as RTP telephone-events through RTCDTMFSender.insertDTMF, and the page,
// which holds the call's control channel as its bot, logs the daemon's `dtmf` events. Prints one
// JSON line: the `dtmf` events the bot received, in order. Every wait polls a condition.
// Usage: node dtmf_keypad.js BROWSER URL
const { launch, placeCall, until } = require('./common');

const [browserName, url] = process.argv.slice(2);
// The keypad's keys in the page's order (its buttons, left to right, top to bottom).
const KEYS = '123456789*0#';

// The `dtmf` events the page's control channel received, parsed from its log lines.
const received = (page) => page.evaluate(() => [...document.getElementById('log').children]
  .map((line) => line.textContent)
  .filter((t) => t.includes('"type":"dtmf"'))
  .map((t) => JSON.parse(t.slice(t.indexOf('{')))));

(async () => {
  const browser = await launch(browserName);
  try {
    const page = await browser.newPage();
    await placeCall(page, url);
    await until(page, 'the keypad (telephone-event negotiated)', 10000,
      () => page.evaluate(() => [...document.getElementById('keypad').children].every((b) => !b.disabled)));
    for (const [i, key] of ['1', '2', '#'].entries()) {
      await page.click(`#keypad button:nth-child(${KEYS.indexOf(key) + 1})`);
      // One key at a time, as a person presses them: the next once this one reached the bot.
      await until(page, `the bot to get key ${key}`, 10000, async () => (await received(page)).length > i);
    }
    // A late duplicate would come within the receiver's end timeout (500 ms): wait for the call
    // to have sent 40 more frames (800 ms of RTP time) and read the events again.
    const frames = async () => (await (await page.evaluate(() => fetch(callPath).then((r) => r.json())))).frames_sent;
    const then = await frames();
    await until(page, '800 ms more of the call', 10000, async () => (await frames()) >= then + 40);
    console.log(JSON.stringify({ dtmf: await received(page) }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
