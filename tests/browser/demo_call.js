// Drives the demo page as a person would, in headless BROWSER (chromium or firefox, Debian's,
// fake microphone; see common.js): Call, "stream like an LLM" with the page's paragraph (one
// utterance per sentence), Interrupt while the second sentence plays. Reads the browser's own
// inbound-rtp statistics (getStats) throughout, saves two screenshots (mid-call, after the
// interrupt) into OUT_DIR, and prints one JSON line of figures for the Rust test to judge.
// Every wait polls for a condition with a timeout; nothing sleeps a fixed time.
// Usage: node demo_call.js BROWSER URL OUT_DIR
const path = require('path');
const { launch, placeCall, until } = require('./common');

const [browserName, url, outDir] = process.argv.slice(2);

// inbound-rtp audio figures of the page's peer connection (`pc` is the page's global).
const sample = (page) => page.evaluate(async () => {
  const out = { at: performance.now() };
  if (!pc) return out;
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      Object.assign(out, {
        packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, jitter: r.jitter,
        totalAudioEnergy: r.totalAudioEnergy, totalSamplesDuration: r.totalSamplesDuration,
        totalSamplesReceived: r.totalSamplesReceived, concealedSamples: r.concealedSamples,
        silentConcealedSamples: r.silentConcealedSamples, concealmentEvents: r.concealmentEvents,
      });
    }
  });
  if (callPath) {
    const info = await (await fetch(callPath)).json().catch(() => ({}));
    Object.assign(out, { framesSent: info.frames_sent, lateFrames: info.late_frames, underrunFrames: info.underrun_frames });
  }
  return out;
});
// Mean audio power between two samples (totalAudioEnergy per second of received audio).
const power = (a, b) => (b.totalAudioEnergy - a.totalAudioEnergy)
  / Math.max(1e-9, b.totalSamplesDuration - a.totalSamplesDuration);
const duration = (a, b) => b.totalSamplesDuration - a.totalSamplesDuration;

const logHas = (page, text) => page.evaluate((t) => document.getElementById('log').textContent.includes(t), text);

(async () => {
  const browser = await launch(browserName);
  try {
    const page = await browser.newPage({ width: 1100, height: 1300 });
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await placeCall(page, url);
    const before = await until(page, 'the first packets', 10000, async () => {
      const s = await sample(page);
      return s.packetsReceived > 0 && s;
    });

    // Stream the page's paragraph like an LLM: one utterance per sentence.
    await page.click('#stream');
    await page.click('#send');
    await until(page, 'utterance 1 to start', 30000, () => logHas(page, '"type":"utterance.started","utterance":1'));
    const speechStart = await sample(page);
    const basePower = power(before, speechStart);
    // Mid-call: the second sentence is playing, the first one's latency row is filled in.
    await until(page, 'utterance 2 to start', 30000, () => logHas(page, '"type":"utterance.started","utterance":2'));
    const rowFilled = await until(page, 'the daemon figures of utterance 1', 10000, () => page.evaluate(() => {
      const cells = document.querySelector('#latency tbody tr').children;
      return cells[2].textContent !== '…' && cells[3].textContent !== '…';
    })).catch((e) => { console.error(String(e)); return false; });
    // The speech window: all of sentence 1 (about 2 s) and the start of sentence 2 (about 4 s
    // long with espeak-ng), so the interrupt below lands in the middle of sentence 2.
    const speechEnd = await until(page, '3.5 s of speech', 15000, async () => {
      const s = await sample(page);
      return duration(speechStart, s) >= 3.5 && s;
    });
    const audible = await until(page, 'the level meter to move', 10000, () => page.evaluate(() => audio && audio.rms > 0.02));
    await page.screenshot({ path: path.join(outDir, 'demo-call.png'), fullPage: true });
    const speechPower = power(speechStart, speechEnd);
    const received = speechEnd.totalSamplesReceived - speechStart.totalSamplesReceived;
    const concealed = speechEnd.concealedSamples - speechStart.concealedSamples;

    // Interrupt: the rest of the paragraph is never heard, the audio energy falls.
    await page.click('#clear');
    await until(page, 'the cleared event', 10000, () => logHas(page, '"type":"cleared"'));
    let windowStart = await sample(page);
    let quietPower = null;
    await until(page, 'half a second of quiet after the interrupt', 15000, async () => {
      const s = await sample(page);
      if (duration(windowStart, s) < 0.5) return false;
      const p = power(windowStart, s);
      if (p < speechPower / 20) { quietPower = p; return true; }
      windowStart = s;
      return false;
    });
    await page.screenshot({ path: path.join(outDir, 'demo-interrupted.png'), fullPage: true });
    const page_ = await page.evaluate(() => ({
      log: document.getElementById('log').textContent,
      latencyRows: [...document.querySelectorAll('#latency tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent)),
      summary: document.getElementById('summary').textContent,
      interrupted: document.getElementById('interrupted').textContent,
      keypadNote: document.getElementById('dtmfNote').textContent,
      postedCandidates: window.postedCandidates,
    }));
    const callInfo = await page.evaluate(async () => (await fetch(callPath)).json());
    await page.click('#hangup');
    console.log(JSON.stringify({
      packetsReceived: speechEnd.packetsReceived, packetsLost: speechEnd.packetsLost, jitter: speechEnd.jitter,
      basePower, speechPower, quietPower, speechSeconds: duration(speechStart, speechEnd),
      samplesReceived: received, concealedSamples: concealed, concealedRatio: concealed / Math.max(1, received),
      speechStart, speechEnd, levelMeterMoved: audible, latencyRowFilled: rowFilled, pageErrors, callInfo, ...page_,
    }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
