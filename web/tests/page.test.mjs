// The page in a real browser: Debian's Chromium driven by playwright-core, WebGPU on whatever
// adapter Chromium offers (SwiftShader on a machine without a GPU).
// Run by tools/web-test.sh, which builds the page and writes the native fixtures first:
//   MIEN_WEB_FIXTURES=<folder of `mien detect --json` outputs> node --test web/tests/
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createRequire } from 'node:module';
import { serve } from '../serve.mjs';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const chromiumPath = process.env.MIEN_CHROMIUM || '/usr/lib/chromium/chromium';
const fixtures = process.env.MIEN_WEB_FIXTURES;
const photos = ['grace_hopper.jpg', 'astronaut.png'];
// SwiftShader runs the kernels on the CPU: minutes, not milliseconds, for the first photo.
const timeout = 20 * 60 * 1000;

let site;
let browser;

before(async () => {
  // The page and, beside it, the shipped photos and a file that is not an image.
  const root = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'mien-web-'));
  fs.cpSync('web/dist', root, { recursive: true });
  fs.mkdirSync(path.join(root, 'photos'));
  for (const photo of photos) fs.copyFileSync(path.join('data/photos', photo), path.join(root, 'photos', photo));
  fs.writeFileSync(path.join(root, 'photos', 'notes.jpg'), 'these are notes, not a JPEG');
  site = await serve(root);
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--enable-unsafe-webgpu', '--enable-webgpu-developer-features'] });
});

after(async () => {
  await browser?.close();
  site?.server.close();
});

async function readyPage() {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  await page.goto(site.url);
  await page.waitForFunction(() => window.mienReady || document.getElementById('status').className === 'error', null, { timeout });
  const status = await page.textContent('#status');
  assert.ok(await page.evaluate(() => window.mienReady), `the page did not start: ${status}; console: ${errors.join(' | ')}`);
  return page;
}

const within = (got, want, tolerance, what) => assert.ok(Math.abs(got - want) <= tolerance, `${what}: ${got} vs native ${want} (tolerance ${tolerance})`);

test('the page labels the shipped photos as native mien detect does, on the GPU and the CPU, from one view or two', { timeout }, async () => {
  assert.ok(fixtures, 'MIEN_WEB_FIXTURES names the folder of native mien detect --json outputs (tools/web-test.sh writes it)');
  const page = await readyPage();
  const adapter = await page.evaluate(() => window.mien.adapter());
  console.log(`adapter: ${JSON.stringify(adapter)}`);
  // The webcam's single view ('none') on the CPU alone: the GPU's kernels are the same.
  const runs = [['yunet', 'gpu', 'mirror'], ['haar', 'gpu', 'mirror'], ['yunet', 'cpu', 'mirror'], ['haar', 'cpu', 'mirror'], ['yunet', 'cpu', 'none']];
  for (const [detector, device, views] of runs) {
    const native = JSON.parse(fs.readFileSync(path.join(fixtures, `${detector}-${views}.json`), 'utf8'));
    for (const photo of photos) {
      const want = native.find((image) => path.basename(image.image) === photo);
      const started = Date.now();
      const got = await page.evaluate(([url, detector, device, views]) => window.mien.detect(url, detector, device, views), [`photos/${photo}`, detector, device, views]);
      const passes = await page.evaluate(() => window.mien.lastPasses());
      const gpuMs = passes.reduce((sum, p) => sum + p.ns, 0) / 1e6;
      console.log(`${detector} on the ${device} (views ${views}) ${photo}: ${got.faces.length} face(s), ${Date.now() - started} ms in the page, ${passes.length} GPU passes timed (${gpuMs.toFixed(1)} ms)`);
      if (device === 'gpu') assert.ok(passes.length > 0 && passes.every((p) => p.ns >= 0 && p.pass), `${detector} ${photo}: the passes' GPU times: ${JSON.stringify(passes.slice(0, 3))}`);
      assert.equal(got.width, want.width, photo);
      assert.equal(got.height, want.height, photo);
      assert.equal(got.faces.length, want.faces.length, `${detector} ${photo}: faces`);
      got.faces.forEach((face, i) => {
        const expected = want.faces[i];
        const what = `${detector} on the ${device} (views ${views}), ${photo} face ${i}`;
        // Whole-pixel boxes: the same corners (YuNet's float corners within 0.5 px round alike
        // here; a corner on a half pixel could round the other way, and would show up here).
        for (const key of ['x', 'y', 'w', 'h']) assert.equal(face[key], expected[key], `${what} ${key}`);
        for (const [k, point] of (expected.landmarks || []).entries()) point.forEach((v, axis) => within(face.landmarks[k][axis], v, 0.5, `${what} landmark ${k}`));
        if (expected.score !== undefined) within(face.score, expected.score, 1e-3, `${what} score`);
        assert.equal(face.emotion, expected.emotion, `${what}: label`);
        const worst = Math.max(...Object.entries(expected.probabilities).map(([name, p]) => Math.abs(face.probabilities[name] - p)));
        console.log(`${what}: probabilities within ${worst.toExponential(2)} of native`);
        for (const [name, p] of Object.entries(expected.probabilities)) within(face.probabilities[name], p, 1e-4, `${what} p(${name})`);
      });
    }
  }
  await page.close();
});

test('every kernel matches its CPU reference on WebGPU', { timeout }, async () => {
  const page = await readyPage();
  const outcomes = await page.evaluate(() => window.mien.suite());
  const slowest = [...outcomes].sort((a, b) => b.milliseconds - a.milliseconds).slice(0, 3);
  console.log(`${outcomes.length} cases; slowest: ${slowest.map((o) => `${o.name} ${o.milliseconds.toFixed(0)} ms`).join(', ')}`);
  const failed = outcomes.filter((o) => !o.passed);
  assert.deepEqual(failed.map((o) => `${o.name}: ${o.detail}`), []);
  await page.close();
});

test('training steps on WebGPU lower the loss as the CPU reference does', { timeout }, async () => {
  const page = await readyPage();
  const started = Date.now();
  const { gpu, cpu } = await page.evaluate(() => window.mien.trainSmoke(4, 4));
  console.log(`losses on WebGPU ${gpu.map((l) => l.toFixed(5)).join(' ')}, on the CPU ${cpu.map((l) => l.toFixed(5)).join(' ')} (${Date.now() - started} ms)`);
  assert.ok(gpu[gpu.length - 1] < 0.8 * gpu[0], `the loss did not fall: ${gpu}`);
  gpu.forEach((loss, step) => within(loss, cpu[step], 1e-3 * cpu[step], `step ${step} loss`));
  await page.close();
});

test('a file that is not an image gets a clear message', { timeout }, async () => {
  const page = await readyPage();
  const message = await page.evaluate(() => window.mien.detect('photos/notes.jpg').then(() => 'no error', (e) => String(e.message || e)));
  assert.match(message, /not an image/);
  await page.close();
});

test('a photo over the page\'s size limit is refused with its size', { timeout }, async () => {
  const page = await readyPage();
  const message = await page.evaluate(async () => {
    const canvas = new OffscreenCanvas(9000, 8000);
    canvas.getContext('2d');
    const blob = await canvas.convertToBlob({ type: 'image/png' });
    return window.mien.detect(URL.createObjectURL(blob)).then(() => 'no error', (e) => String(e.message || e));
  });
  assert.match(message, /9000x8000 is 72 megapixels, more than the 64/);
  await page.close();
});

test('the webcam\'s face is labelled as native mien detect labels it, and a refused camera gets a clear message', { timeout }, async () => {
  // tools/web-test.sh writes the fake camera's picture (a face) and native mien's answer for it.
  const native = JSON.parse(fs.readFileSync(path.join(fixtures, 'camera.json'), 'utf8'))[0];
  const camera = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--enable-unsafe-webgpu', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', `--use-file-for-fake-video-capture=${path.join(fixtures, 'camera.y4m')}`],
  });
  try {
    const page = await camera.newPage();
    await page.goto(site.url);
    await page.waitForFunction(() => window.mienReady, null, { timeout });
    await page.click('#webcam');
    await page.waitForFunction(() => /^Webcam frame \d+:/.test(document.getElementById('status').textContent), null, { timeout });
    const status = await page.textContent('#status');
    console.log(`webcam: ${status}`);
    assert.match(status, new RegExp(`: ${native.faces.length} face\\(s\\)`), `the fake camera shows ${native.faces.length} face(s) to native mien`);
    // Each listed face's most probable class, from its rows of class name and bar.
    const labels = await page.$$eval('#faces li', (items) =>
      items.map((item) => [...item.querySelectorAll('div')].map((row) => [row.querySelector('.class').textContent, parseFloat(row.lastChild.textContent)]).sort((a, b) => b[1] - a[1])[0][0]),
    );
    assert.deepEqual(labels, native.faces.map((face) => face.emotion));
    await page.click('#webcam');
  } finally {
    await camera.close();
  }
  const refusing = await chromium.launch({ executablePath: chromiumPath, args: ['--enable-unsafe-webgpu', '--use-fake-device-for-media-stream', '--deny-permission-prompts'] });
  try {
    const page = await refusing.newPage();
    await page.goto(site.url);
    await page.waitForFunction(() => window.mienReady, null, { timeout });
    await page.click('#webcam');
    await page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 60000 });
    assert.match(await page.textContent('#status'), /camera was refused/);
  } finally {
    await refusing.close();
  }
});

test('without WebGPU the page says what to enable', { timeout }, async () => {
  const plain = await chromium.launch({ executablePath: chromiumPath });
  try {
    const page = await plain.newPage();
    await page.goto(site.url);
    await page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 60000 });
    assert.match(await page.textContent('#status'), /enable-unsafe-webgpu/);
  } finally {
    await plain.close();
  }
});
