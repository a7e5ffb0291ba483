// The page: loads mien's WebAssembly and models, labels a photo the visitor picks or drops, or
// the webcam, and exposes window.mien for tests and scripts (mien.detect(url) returns what
// `mien detect --json` gives for an image).
import init, { open, ModelFiles } from './pkg/mien_web.js';

/** One face as `mien detect --json` reports it. */
interface Face {
  x: number;
  y: number;
  w: number;
  h: number;
  score?: number;
  landmarks?: [number, number][];
  emotion?: string;
  probabilities?: Record<string, number>;
}

/** One image as `mien detect --json` reports it. */
interface ImageReport {
  image: string;
  width: number;
  height: number;
  faces: Face[];
}

/** One GPU pass of the last image. */
interface Pass {
  pass: string;
  start_ns: number;
  ns: number;
}

/** One case of the kernel suite. */
interface Outcome {
  name: string;
  passed: boolean;
  worst: number | null;
  tolerance: number;
  detail: string | null;
  milliseconds: number;
}

/** Decoded pixels, with what they were drawn from. */
interface Frame {
  source: CanvasImageSource;
  width: number;
  height: number;
  rgba: Uint8ClampedArray;
}

/** WebGPU's entry point, which TypeScript's DOM library does not declare yet. */
type WithGpu = Navigator & { gpu?: { requestAdapter(): Promise<unknown | null> } };

const element = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const status = element<HTMLParagraphElement>('status');
const detectorChoice = element<HTMLSelectElement>('detector');
const deviceChoice = element<HTMLSelectElement>('device');

const fail = (message: string): void => {
  status.textContent = message;
  status.className = 'error';
};

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

const bytes = async (url: string): Promise<Uint8Array> => {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
};

// Larger images are refused: their pixels, and the detector's tensors for them, would not fit
// in a page's memory (a 64-megapixel photo is 256 MB of RGBA before mien copies it).
const MAX_PIXELS = 64e6;

// The RGBA pixels of an image, a bitmap or a video frame of `width` x `height`.
function framePixels(source: CanvasImageSource, width: number, height: number): Frame {
  if (width * height > MAX_PIXELS) {
    throw new Error(
      `${width}x${height} is ${((width * height) / 1e6).toFixed(0)} megapixels, more than the ${MAX_PIXELS / 1e6} this page takes: shrink it first (mien detect on the command line takes up to 268)`,
    );
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d') as OffscreenCanvasRenderingContext2D;
  context.drawImage(source, 0, 0);
  return { source, width, height, rgba: context.getImageData(0, 0, width, height).data };
}

// The image's RGBA pixels as the browser decodes it (EXIF orientation applied, as mien does).
async function pixels(blob: Blob): Promise<Frame> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image' });
  } catch {
    throw new Error('this file is not an image the browser can decode');
  }
  return framePixels(bitmap, bitmap.width, bitmap.height);
}

// The frame with each face's box, its label on a filled background, and the probability bars.
function draw(frame: Frame, report: ImageReport): void {
  const canvas = element<HTMLCanvasElement>('canvas');
  canvas.width = frame.width;
  canvas.height = frame.height;
  const context = canvas.getContext('2d') as CanvasRenderingContext2D;
  context.drawImage(frame.source, 0, 0);
  context.lineWidth = Math.max(2, frame.width / 400);
  const fontPx = Math.max(12, frame.width / 60);
  context.font = `${fontPx}px sans-serif`;
  const list = element<HTMLOListElement>('faces');
  list.replaceChildren();
  for (const face of report.faces) {
    context.strokeStyle = '#0c0';
    context.strokeRect(face.x, face.y, face.w, face.h);
    const probabilities = face.probabilities ?? {};
    const caption = face.emotion ? `${face.emotion} ${probabilities[face.emotion].toFixed(2)}` : 'face';
    const width = context.measureText(caption).width + 6;
    const height = fontPx + 4;
    const y = face.y >= height ? face.y - height : face.y + face.h;
    context.fillStyle = '#0c0';
    context.fillRect(face.x, y, width, height);
    context.fillStyle = '#000';
    context.fillText(caption, face.x + 3, y + height - 4);
    const item = document.createElement('li');
    for (const [name, p] of Object.entries(probabilities)) {
      const row = document.createElement('div');
      const label = Object.assign(document.createElement('span'), { className: 'class', textContent: name });
      const bar = Object.assign(document.createElement('span'), { className: 'bar' });
      bar.style.width = `${(p * 20).toFixed(2)}em`;
      row.append(label, bar, ` ${p.toFixed(3)}`);
      item.append(row);
    }
    list.append(item);
  }
}

// The last photo's GPU passes, summed by kernel, longest first.
function showPasses(passes: Pass[]): void {
  const byKernel = new Map<string, { count: number; ns: number }>();
  for (const p of passes) {
    const entry = byKernel.get(p.pass) ?? { count: 0, ns: 0 };
    entry.count += 1;
    entry.ns += p.ns;
    byKernel.set(p.pass, entry);
  }
  const table = element<HTMLTableElement>('passes');
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

async function main(): Promise<void> {
  const gpu = (navigator as WithGpu).gpu;
  if (!gpu) {
    fail('This browser has no WebGPU. Use a recent Chrome, Edge or Safari; on Linux start Chromium with --enable-unsafe-webgpu.');
    return;
  }
  if (!(await gpu.requestAdapter())) {
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
  const adapter = JSON.parse(session.adapter());
  element('adapter').textContent = JSON.stringify(adapter, null, 2);

  // "auto" labels on the CPU (WebAssembly) when the adapter is a software one such as
  // SwiftShader, many times slower than the CPU it runs on; as `mien --device auto` does.
  const resolveDevice = (device: string): string => (device === 'auto' ? (adapter.software ? 'cpu' : 'gpu') : device);
  const lastPasses = (): Pass[] => JSON.parse(session.last_passes());
  // `views`: 'mirror' labels each face from it and its mirror image, as `mien detect` labels
  // photos; 'none' from the face alone, at half the cost, as `mien detect` labels videos.
  const label = async (frame: Frame, name: string, detector: string, device: string, views = 'mirror'): Promise<ImageReport> => {
    const report: ImageReport = JSON.parse(await session.detect(new Uint8Array(frame.rgba.buffer), frame.width, frame.height, name, detector, resolveDevice(device), views));
    showPasses(lastPasses());
    return report;
  };
  const detect = async (blob: Blob, name: string, detector = 'yunet', device = 'auto', views = 'mirror') => {
    const frame = await pixels(blob);
    return { frame, report: await label(frame, name, detector, device, views) };
  };
  const show = async (blob: Blob, name: string) => {
    status.className = '';
    status.textContent = `Looking at ${name}…`;
    try {
      const started = performance.now();
      const { frame, report } = await detect(blob, name, detectorChoice.value, deviceChoice.value);
      draw(frame, report);
      status.textContent = `${name}: ${report.faces.length} face(s) in ${(performance.now() - started).toFixed(0)} ms on the ${resolveDevice(deviceChoice.value).toUpperCase()}`;
    } catch (e) {
      fail(`${name}: ${errorText(e)}`);
    }
  };

  // The webcam: each frame labelled as soon as the one before is done (frames in between are
  // skipped, so the labels stay current however slow the GPU).
  let webcam: MediaStream | null = null;
  const webcamButton = element<HTMLButtonElement>('webcam');
  const stopWebcam = () => {
    webcam?.getTracks().forEach((track) => track.stop());
    webcam = null;
    webcamButton.textContent = 'Webcam';
  };
  const labelWebcam = async (video: HTMLVideoElement) => {
    let frames = 0;
    while (webcam) {
      if (video.videoWidth > 0) {
        const started = performance.now();
        const frame = framePixels(video, video.videoWidth, video.videoHeight);
        const report = await label(frame, `webcam frame ${frames}`, detectorChoice.value, deviceChoice.value, 'none');
        draw(frame, report);
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
      const refused = e instanceof DOMException && e.name === 'NotAllowedError';
      fail(refused ? 'The camera was refused: allow this page to use the camera (the icon in the address bar) and press Webcam again.' : `No camera: ${errorText(e)}`);
      return;
    }
    webcamButton.textContent = 'Stop the webcam';
    const video = element<HTMLVideoElement>('video');
    video.srcObject = webcam;
    await video.play();
    labelWebcam(video).catch((e) => {
      stopWebcam();
      fail(`Webcam: ${errorText(e)}`);
    });
  });

  const trainSmoke = async (steps = 4, batch = 4): Promise<{ gpu: number[]; cpu: number[] }> => JSON.parse(await session.train_smoke(steps, batch));
  const trainButton = element<HTMLButtonElement>('train');
  trainButton.addEventListener('click', async () => {
    trainButton.disabled = true;
    status.textContent = 'Training…';
    const started = performance.now();
    const { gpu: onGpu, cpu: onCpu } = await trainSmoke();
    const rows = onGpu.map((loss, i) => `step ${i + 1}: loss ${loss.toFixed(4)} on the GPU, ${onCpu[i].toFixed(4)} on the CPU`);
    element('losses').textContent = rows.join('\n');
    status.textContent = `Trained ${onGpu.length} steps in ${(performance.now() - started).toFixed(0)} ms`;
    trainButton.disabled = false;
  });
  trainButton.disabled = false;

  // Runs every kernel case; `onCase` hears each case's name as it starts.
  const suite = async (onCase: (name: string) => void = () => {}): Promise<Outcome[]> => JSON.parse(await session.kernel_suite(onCase));
  const suiteButton = element<HTMLButtonElement>('suite');
  suiteButton.addEventListener('click', async () => {
    suiteButton.disabled = true;
    const table = element<HTMLTableElement>('suite-results');
    table.replaceChildren();
    const outcomes = await suite((name) => {
      status.textContent = `Kernel suite: ${name}…`;
    });
    for (const o of outcomes) {
      const row = table.insertRow();
      row.insertCell().textContent = o.passed ? 'ok' : 'FAILED';
      row.insertCell().textContent = o.name;
      row.insertCell().textContent = o.passed ? `worst ${Number(o.worst).toExponential(1)} (tolerance ${o.tolerance})` : (o.detail ?? '');
      row.insertCell().textContent = `${o.milliseconds.toFixed(0)} ms`;
    }
    const failed = outcomes.filter((o) => !o.passed).length;
    status.textContent = `Kernel suite: ${outcomes.length - failed} of ${outcomes.length} cases passed`;
    suiteButton.disabled = false;
  });
  suiteButton.disabled = false;

  const page = window as unknown as Record<string, unknown>;
  page.mien = {
    adapter: () => JSON.parse(session.adapter()),
    detect: async (url: string, detector = 'yunet', device = 'auto', views = 'mirror'): Promise<ImageReport> => {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      return (await detect(await response.blob(), url.split('/').pop() ?? url, detector, device, views)).report;
    },
    lastPasses,
    suite,
    trainSmoke,
  };

  element<HTMLInputElement>('file').addEventListener('change', (event) => {
    const file = (event.target as HTMLInputElement).files?.[0];
    if (file) show(file, file.name);
  });
  const drop = element('drop');
  drop.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const file = event.dataTransfer?.files[0];
    if (file) show(file, file.name);
  });
  element('controls').hidden = false;
  status.textContent = 'Ready: pick or drop a photo, or start the webcam.';
  page.mienReady = true;
}

main().catch((e) => fail(`mien could not start: ${errorText(e)}`));
