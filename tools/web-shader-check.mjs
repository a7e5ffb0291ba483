// Compiles every mien shader in Chromium's WebGPU (Tint, Chrome's WGSL compiler, on
// SwiftShader when there is no GPU) and builds a compute pipeline for each entry point, with
// the shader's override constants: a shader Tint rejects is named with Tint's message. Shaders
// that use subgroup built-ins get `enable subgroups;` (Tint needs it, naga refuses it) and run
// only where the adapter has subgroups; the web build never selects them otherwise.
//
// Run: target/debug/mien shaders --out out/shaders
//      node tools/web-shader-check.mjs out/shaders [--chromium /usr/lib/chromium/chromium]
// Needs Debian's chromium and npm's playwright-core (web/package.json).
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(path.resolve('web/package.json'));
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const folder = args[0];
const browserPath = args.includes('--chromium') ? args[args.indexOf('--chromium') + 1] : '/usr/lib/chromium/chromium';
if (!folder || !fs.existsSync(path.join(folder, 'shaders.json'))) {
  console.error('usage: node tools/web-shader-check.mjs FOLDER (written by `mien shaders --out FOLDER`)');
  process.exit(2);
}

// WebGPU needs a secure context: a page served from 127.0.0.1 is one.
const server = http.createServer((req, res) => {
  const name = path.basename(decodeURIComponent(req.url.split('?')[0]));
  const file = path.join(folder, name);
  if (name && fs.existsSync(file)) {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(fs.readFileSync(file));
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>mien shader check</title>');
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({ executablePath: browserPath, args: ['--enable-unsafe-webgpu'] });
let failed = 0;
try {
  const page = await browser.newPage();
  await page.goto(url);
  const report = await page.evaluate(async () => {
    if (!navigator.gpu) return { error: 'no navigator.gpu' };
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { error: 'requestAdapter() gave no adapter (is --enable-unsafe-webgpu on?)' };
    const subgroups = adapter.features.has('subgroups');
    const limits = {};
    for (const key of ['maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxStorageBufferBindingSize']) {
      limits[key] = adapter.limits[key];
    }
    const device = await adapter.requestDevice({ requiredFeatures: subgroups ? ['subgroups'] : [], requiredLimits: limits });
    const info = adapter.info || {};
    const index = await (await fetch('shaders.json')).json();
    const results = [];
    for (const shader of index) {
      let code = await (await fetch(shader.file)).text();
      const uncommented = code.split('\n').filter((line) => !line.trim().startsWith('//')).join('\n');
      const needsSubgroups = /\bsubgroup[A-Z]\w*\s*\(|@builtin\(subgroup/.test(uncommented);
      if (needsSubgroups && !subgroups) {
        results.push({ name: shader.name, skipped: 'needs subgroups, which this adapter lacks' });
        continue;
      }
      if (needsSubgroups) code = 'enable subgroups;\n' + code;
      const module = device.createShaderModule({ code, label: shader.name });
      const messages = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error').map((m) => `line ${m.lineNum}: ${m.message}`);
      const entries = [...code.matchAll(/@compute[\s\S]*?fn\s+(\w+)/g)].map((m) => m[1]);
      const pipelines = [];
      for (const entryPoint of entries) {
        device.pushErrorScope('validation');
        let error = null;
        try {
          await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint, constants: shader.constants } });
        } catch (e) {
          error = String(e.message || e);
        }
        const scoped = await device.popErrorScope();
        if (scoped) error = error || scoped.message;
        pipelines.push({ entryPoint, error });
      }
      results.push({ name: shader.name, subgroups: needsSubgroups, messages, pipelines });
    }
    return { adapter: `${info.vendor || '?'} ${info.architecture || ''} ${info.description || ''}`.trim(), subgroups, results };
  });
  if (report.error) {
    console.error(report.error);
    process.exit(1);
  }
  console.log(`adapter: ${report.adapter}; subgroups: ${report.subgroups}`);
  for (const r of report.results) {
    if (r.skipped) {
      console.log(`skip  ${r.name}: ${r.skipped}`);
      continue;
    }
    const bad = r.messages.length > 0 || r.pipelines.some((p) => p.error);
    if (bad) failed += 1;
    console.log(`${bad ? 'FAIL' : 'ok  '}  ${r.name}${r.subgroups ? ' (subgroups)' : ''}: ${r.pipelines.length} entry point(s)`);
    for (const m of r.messages) console.log(`        ${m}`);
    for (const p of r.pipelines.filter((p) => p.error)) console.log(`        ${p.entryPoint}: ${p.error}`);
  }
  console.log(`${report.results.length} shaders, ${failed} rejected`);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
