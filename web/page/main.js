// The page: loads mien's WebAssembly and models, labels a photo the visitor picks or drops,
// and exposes window.mien.detect(url) returning what `mien detect --json` gives for an image.
import init, { open, ModelFiles } from './pkg/mien_web.js';

const status = document.getElementById('status');
const fail = (message) => {
  status.textContent = message;
  status.className = 'error';
};

const bytes = async (url) => {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
};

// Larger images are refused: their pixels, and the detector's tensors for them, would not fit
// in a page's memory (a 64-megapixel photo is 256 MB of RGBA before mien copies it).
const MAX_PIXELS = 64e6;

// The image's RGBA pixels as the browser decodes it (EXIF orientation applied, as mien does).
async function pixels(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image' });
  } catch {
    throw new Error('this file is not an image the browser can decode');
  }
  return framePixels(bitmap);
}

// The RGBA pixels of an image, a bitmap or a video frame of `width` x `height`.
function framePixels(bitmap, width = bitmap.width, height = bitmap.height) {
  if (width * height > MAX_PIXELS) {
    throw new Error(`${width}x${height} is ${(width * height / 1e6).toFixed(0)} megapixels, more than the ${MAX_PIXELS / 1e6} this page takes: shrink it first (mien detect on the command line takes up to 268)`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  return { bitmap, rgba: context.getImageData(0, 0, width, height).data };
}

function draw(bitmap, report, width = bitmap.width, height = bitmap.height) {
  const canvas = document.getElementById('canvas');
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  context.lineWidth = Math.max(2, width / 400);
  context.font = `${Math.max(12, width / 60)}px sans-serif`;
  const list = document.getElementById('faces');
  list.replaceChildren();
  for (const face of report.faces) {
    context.strokeStyle = '#0c0';
    context.strokeRect(face.x, face.y, face.w, face.h);
    const caption = face.emotion ? `${face.emotion} ${face.probabilities[face.emotion].toFixed(2)}` : 'face';
    const width = context.measureText(caption).width + 6;
    const height = parseInt(context.font, 10) + 4;
    const y = face.y >= height ? face.y - height : face.y + face.h;
    context.fillStyle = '#0c0';
    context.fillRect(face.x, y, width, height);
    context.fillStyle = '#000';
    context.fillText(caption, face.x + 3, y + height - 4);
    const item = document.createElement('li');
    for (const [name, p] of Object.entries(face.probabilities || {})) {
      const row = document.createElement('div');
      row.innerHTML = `<span class="class">${name}</span><span class="bar" style="width:${(p * 20).toFixed(2)}em"></span> ${p.toFixed(3)}`;
      item.append(row);
    }
    list.append(item);
  }
}

// The last photo's GPU passes, summed by kernel, longest first.
function showPasses(passes) {
  const byKernel = new Map();
  for (const p of passes) {
    const entry = byKernel.get(p.pass) || { count: 0, ns: 0 };
    entry.count += 1;
    entry.ns += p.ns;
    byKernel.set(p.pass, entry);
  }
  const table = document.getElementById('passes');
  table.replaceChildren();
  const total = passes.reduce((sum, p) => sum + p.ns, 0);
  for (const [pass, { count, ns }] of [...byKernel].sort((a, b) => b[1].ns - a[1].ns)) {
    const row = table.insertRow();
    row.insertCell().textContent = pass;
    row.insertCell().textContent = `${count} pass${count > 1 ? 'es' : ''}`;
    row.insertCell().textContent = `${(ns / 1e6).toFixed(2)} ms`;
  }
  table.insertRow().insertCell().textContent = `${passes.length} passes, ${(total / 1e6).toFixed(1)} ms of GPU time`;
}

async function main() {
  if (!navigator.gpu) {
    fail('This browser has no WebGPU. Use a recent Chrome, Edge or Safari; on Linux start Chromium with --enable-unsafe-webgpu.');
    return;
  }
  if (!(await navigator.gpu.requestAdapter())) {
    fail('WebGPU is present but offers no adapter. On Linux start Chromium with --enable-unsafe-webgpu; elsewhere check that hardware acceleration is on.');
    return;
  }
  await init();
  const files = new ModelFiles(
    await bytes('assets/yunet_n.json'),
    await bytes('assets/yunet_n.safetensors'),
    await bytes('assets/expression.safetensors'),
    new TextDecoder().decode(await bytes('assets/haarcascade_frontalface_default.xml')),
  );
  const session = await open(files);
  document.getElementById('adapter').textContent = JSON.stringify(JSON.parse(session.adapter()), null, 2);

  const label = async ({ bitmap, rgba }, width, height, name, detector) => {
    const report = JSON.parse(await session.detect(new Uint8Array(rgba.buffer), width, height, name, detector));
    showPasses(JSON.parse(session.last_passes()));
    return report;
  };
  const detect = async (blob, name, detector = 'yunet') => {
    const frame = await pixels(blob);
    return { bitmap: frame.bitmap, report: await label(frame, frame.bitmap.width, frame.bitmap.height, name, detector) };
  };

  // The webcam: each frame labelled as soon as the one before is done (frames in between are
  // skipped, so the labels stay current however slow the GPU).
  let webcam = null;
  const webcamButton = document.getElementById('webcam');
  const stopWebcam = () => {
    webcam?.getTracks().forEach((track) => track.stop());
    webcam = null;
    webcamButton.textContent = 'Webcam';
  };
  const labelWebcam = async (video) => {
    let frames = 0;
    while (webcam) {
      const [width, height] = [video.videoWidth, video.videoHeight];
      if (width > 0) {
        const started = performance.now();
        const report = await label(framePixels(video, width, height), width, height, `webcam frame ${frames}`, document.getElementById('detector').value);
        draw(video, report, width, height);
        frames += 1;
        status.textContent = `Webcam frame ${frames}: ${report.faces.length} face(s) in ${(performance.now() - started).toFixed(0)} ms`;
      }
      await new Promise((resolve) => requestAnimationFrame(resolve));
    }
  };
  webcamButton.addEventListener('click', async () => {
    if (webcam) {
      stopWebcam();
      return;
    }
    try {
      webcam = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      const refused = e.name === 'NotAllowedError';
      fail(refused ? 'The camera was refused: allow this page to use the camera (the icon in the address bar) and press Webcam again.' : `No camera: ${e.message || e.name}`);
      return;
    }
    webcamButton.textContent = 'Stop the webcam';
    const video = document.getElementById('video');
    video.srcObject = webcam;
    await video.play();
    labelWebcam(video).catch((e) => {
      stopWebcam();
      fail(`Webcam: ${e.message || e}`);
    });
  });
  const show = async (blob, name) => {
    status.className = '';
    status.textContent = `Looking at ${name}…`;
    try {
      const started = performance.now();
      const { bitmap, report } = await detect(blob, name, document.getElementById('detector').value);
      draw(bitmap, report);
      status.textContent = `${name}: ${report.faces.length} face(s) in ${(performance.now() - started).toFixed(0)} ms`;
    } catch (e) {
      fail(`${name}: ${e.message || e}`);
    }
  };

  // Runs every kernel case; `onCase` hears each case's name as it starts.
  const suite = async (onCase = () => {}) => JSON.parse(await session.kernel_suite(onCase));
  const suiteButton = document.getElementById('suite');
  suiteButton.addEventListener('click', async () => {
    suiteButton.disabled = true;
    const table = document.getElementById('suite-results');
    table.replaceChildren();
    const outcomes = await suite((name) => {
      status.textContent = `Kernel suite: ${name}…`;
    });
    for (const o of outcomes) {
      const row = table.insertRow();
      row.insertCell().textContent = o.passed ? 'ok' : 'FAILED';
      row.insertCell().textContent = o.name;
      row.insertCell().textContent = o.passed ? `worst ${Number(o.worst).toExponential(1)} (tolerance ${o.tolerance})` : o.detail;
      row.insertCell().textContent = `${o.milliseconds.toFixed(0)} ms`;
    }
    const failed = outcomes.filter((o) => !o.passed).length;
    status.textContent = `Kernel suite: ${outcomes.length - failed} of ${outcomes.length} cases passed`;
    suiteButton.disabled = false;
  });
  suiteButton.disabled = false;

  const trainSmoke = async (steps = 4, batch = 4) => JSON.parse(await session.train_smoke(steps, batch));
  const trainButton = document.getElementById('train');
  trainButton.addEventListener('click', async () => {
    trainButton.disabled = true;
    status.textContent = 'Training…';
    const started = performance.now();
    const { gpu, cpu } = await trainSmoke();
    const rows = gpu.map((loss, i) => `step ${i + 1}: loss ${loss.toFixed(4)} on the GPU, ${cpu[i].toFixed(4)} on the CPU`);
    document.getElementById('losses').textContent = rows.join('\n');
    status.textContent = `Trained ${gpu.length} steps in ${(performance.now() - started).toFixed(0)} ms`;
    trainButton.disabled = false;
  });
  trainButton.disabled = false;

  window.mien = {
    adapter: () => JSON.parse(session.adapter()),
    suite,
    trainSmoke,
    lastPasses: () => JSON.parse(session.last_passes()),
    detect: async (url, detector = 'yunet') => {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      return (await detect(await response.blob(), url.split('/').pop(), detector)).report;
    },
  };

  document.getElementById('file').addEventListener('change', (event) => {
    const file = event.target.files[0];
    if (file) show(file, file.name);
  });
  const drop = document.getElementById('drop');
  drop.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const file = event.dataTransfer.files[0];
    if (file) show(file, file.name);
  });
  document.getElementById('controls').hidden = false;
  status.textContent = 'Ready: pick or drop a photo.';
  window.mienReady = true;
}

main().catch((e) => fail(`mien could not start: ${e.message || e}`));
