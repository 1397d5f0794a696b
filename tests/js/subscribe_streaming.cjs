// @fal-ai/client, unchanged, in streaming mode against the emulator.
// Usage: node subscribe_streaming.cjs <node_modules dir>; env EMU_QUEUE, EMU_REST, FAL_KEY,
// INPUT_URL. The client's hosts are rerouted with a fetch wrapper (it ignores the URLs the
// server returns); it prints one JSON line with what it saw.
const path = require("node:path");
const { createFalClient } = require(path.join(process.argv[2], "@fal-ai/client"));

const hosts = [
  ["https://queue.fal.run", process.env.EMU_QUEUE],
  ["https://rest.fal.ai", process.env.EMU_REST],
];
const realFetch = globalThis.fetch;
const urls = [];
const reroute = (input, init) => {
  let url = typeof input === "string" ? input : input.url;
  for (const [from, to] of hosts) {
    if (url.startsWith(from)) url = to + url.slice(from.length);
  }
  urls.push(url);
  return realFetch(url, init);
};

async function main() {
  const fal = createFalClient({ credentials: process.env.FAL_KEY, fetch: reroute });
  const updates = [];
  const result = await fal.subscribe("fal-ai/gpt-image-1/edit-image", {
    input: { prompt: "make it pixel art", image_urls: [process.env.INPUT_URL] },
    mode: "streaming",
    logs: true,
    onQueueUpdate: (update) => updates.push(update),
  });
  console.log(JSON.stringify({
    requestId: result.requestId,
    images: result.data.images.length,
    statuses: updates.map((u) => u.status),
    logs: updates.length ? (updates[updates.length - 1].logs || []).length : 0,
    streamed: urls.some((u) => u.includes("/status/stream")),
  }));
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
