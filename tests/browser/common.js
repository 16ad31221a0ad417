// What the browser scripts share: a headless browser started as stack-notes.md says (loopback
// WebRTC, a fake microphone, autoplay allowed, no background networking), and a poll for a page
// condition. Two browsers, each driven through the pinned npm package that can drive Debian's
// build of it without downloading a browser of its own:
// - `chromium`: /usr/bin/chromium through playwright-core (the Chrome DevTools Protocol);
// - `firefox`: /usr/bin/firefox-esr through puppeteer-core over WebDriver BiDi, the standard
//   protocol stock Firefox speaks (playwright-core's Firefox needs its own patched build).
// Both pages answer the calls the scripts make (goto, click, evaluate, screenshot, the
// `pageerror` event); anything library-specific (waits, checkboxes, text selectors) stays out of
// the scripts.

// Firefox preferences for a loopback call with a fake microphone and autoplaying audio.
const FIREFOX_PREFS = {
  // getUserMedia gets a generated tone instead of a device, without asking. Granted as a
  // permission (not by `media.navigator.permission.disabled`, after which Firefox offers only
  // the default route's address): ICE then gathers every host address, loopback included.
  'media.navigator.streams.fake': true,
  'permissions.default.microphone': 1,
  // Audio plays (and an AudioContext runs) without a user gesture.
  'media.autoplay.default': 0,
  'media.autoplay.block-webaudio': false,
  // A mock audio output device: without one (no sound server on a test machine) Firefox never
  // lets an AudioContext run, and the page's level meter would stay at zero.
  'media.cubeb.force_mock_context': true,
  // ICE gathers loopback candidates too, as plain addresses (no mDNS names), UDP only.
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.peerconnection.ice.tcp': false,
  // No network besides the page's.
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
};

// Starts `name` ('chromium' or 'firefox') headless; returns { newPage(viewport), close() }.
exports.launch = async (name) => {
  if (name === 'chromium') {
    const { chromium } = require('playwright-core');
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
    return {
      newPage: (viewport) => browser.newPage(viewport ? { viewport } : {}),
      close: () => browser.close(),
    };
  }
  if (name === 'firefox') {
    const puppeteer = require('puppeteer-core');
    const browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
      headless: true,
      extraPrefsFirefox: FIREFOX_PREFS,
      defaultViewport: null,
    });
    return {
      newPage: async (viewport) => {
        const page = await browser.newPage();
        if (viewport) await page.setViewport(viewport);
        return page;
      },
      close: () => browser.close(),
    };
  }
  throw new Error(`unknown browser ${JSON.stringify(name)}: chromium or firefox`);
};

// Opens the demo page at `url`, presses Call and waits until the call is connected and the
// page holds its control channel (the Say button is enabled).
exports.placeCall = async (page, url) => {
  await page.goto(url);
  // Every address the daemon sends to is on 127.0.0.0/8: the offer the page posts keeps only
  // its 127.x candidates (both browsers also gather the machine's other addresses, and neither
  // can be told not to).
  await page.evaluate(() => {
    const plainFetch = window.fetch;
    window.fetch = (resource, init) => {
      if (init && init.method === 'POST' && typeof init.body === 'string' && init.body.startsWith('v=0')) {
        const loopbackOnly = init.body.split('\r\n')
          .filter((line) => !line.startsWith('a=candidate:') || / 127\.\d+\.\d+\.\d+ /.test(line));
        init = { ...init, body: loopbackOnly.join('\r\n') };
        window.postedCandidates = loopbackOnly.filter((line) => line.startsWith('a=candidate:'));
      }
      return plainFetch(resource, init);
    };
  });
  await page.click('#call');
  await exports.until(page, 'the call to connect', 20000,
    () => page.evaluate(() => document.getElementById('state').textContent === 'connected'));
  await exports.until(page, 'the control channel', 10000,
    () => page.evaluate(() => !document.getElementById('send').disabled));
};

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
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};
