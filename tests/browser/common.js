// What the browser scripts share: Debian's Chromium started as stack-notes.md says (loopback
// WebRTC, fake media devices, no background networking), and a poll for a page condition.
const { chromium } = require('playwright-core');

// Headless Chromium able to place a loopback WebRTC call with a fake microphone.
exports.launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--autoplay-policy=no-user-gesture-required',
  ],
});

// Polls `check` (every 50 ms) until it returns something truthy, which it returns; throws
// naming `what`, with the page's event log, after `timeoutMs`.
exports.until = async (page, what, timeoutMs, check) => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      const log = await page.evaluate(() => document.getElementById('log').textContent).catch(() => '');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\npage log:\n${log}`);
    }
    await page.waitForTimeout(50);
  }
};
