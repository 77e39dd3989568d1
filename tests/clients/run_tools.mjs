#!/usr/bin/env node
// openai-node's tool runner against the gateway: chat.completions.runTools() with one
// client-side tool, get_weather, that the SDK itself runs when the model calls it.
//
// Usage: node tests/clients/run_tools.mjs --base-url http://127.0.0.1:PORT/v1 --stream true|false
//                                         [--question TEXT] [--tag TEXT]
// (--base-url defaults to $OPENAI_BASE_URL.) The tool's result carries --tag, so a test can
// see it reach the model in the next request.
//
// Prints one JSON object on stdout: {final_content, tool_runs: [{name, arguments}],
// tool_calls (as the model sent them), requests (HTTP requests made), request_roles (the
// message roles of each request), finish_reasons, stream}. Exits 1 with {"error": ...} on
// failure. Every request is bounded (timeout 60 s, no retries, at most 4 completions).

import OpenAI from "openai";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string", default: process.env.OPENAI_BASE_URL },
    stream: { type: "string", default: "false" },
    question: { type: "string", default: "What is the weather in Oslo?" },
    tag: { type: "string", default: "tag-0" },
  },
});
if (!args["base-url"]) {
  console.error("run_tools.mjs: --base-url (or OPENAI_BASE_URL) is required");
  process.exit(2);
}
const stream = args.stream === "true";

// Count and record what actually goes over the wire.
const sent = [];
async function countingFetch(url, init) {
  let body = null;
  try {
    body = JSON.parse(init?.body ?? "null");
  } catch {
    body = null;
  }
  sent.push({ url: String(url), method: init?.method ?? "GET", body });
  return fetch(url, init);
}

const client = new OpenAI({
  apiKey: "sk-test",
  baseURL: args["base-url"],
  maxRetries: 0,
  timeout: 60_000,
  fetch: countingFetch,
});

const toolRuns = [];
function getWeather(parsed) {
  toolRuns.push({ name: "get_weather", arguments: parsed });
  return { city: parsed.city, forecast: "light rain, 12 C", tag: args.tag };
}

async function main() {
  const runner = client.chat.completions.runTools(
    {
      model: "gemini-cli",
      stream,
      messages: [{ role: "user", content: args.question }],
      tools: [
        {
          type: "function",
          function: {
            name: "get_weather",
            description: "Current weather for a city.",
            function: getWeather,
            parse: JSON.parse,
            parameters: {
              type: "object",
              properties: { city: { type: "string" } },
              required: ["city"],
            },
          },
        },
      ],
    },
    { maxChatCompletions: 4 },
  );
  const streamedText = [];
  if (stream) runner.on("content", (delta) => streamedText.push(delta));
  const finalContent = await runner.finalContent();
  const completions = runner.allChatCompletions();
  const summary = {
    stream,
    final_content: finalContent,
    streamed_text: stream ? streamedText.join("") : null,
    tool_runs: toolRuns,
    tool_calls: completions.flatMap((c) =>
      (c.choices[0]?.message?.tool_calls ?? []).map((t) => ({
        id: t.id,
        type: t.type,
        name: t.function.name,
        arguments: t.function.arguments,
      })),
    ),
    finish_reasons: completions.map((c) => c.choices[0]?.finish_reason ?? null),
    requests: sent.length,
    request_urls: sent.map((r) => `${r.method} ${r.url}`),
    request_roles: sent.map((r) => (r.body?.messages ?? []).map((m) => m.role)),
    request_stream: sent.map((r) => r.body?.stream ?? null),
  };
  process.stdout.write(JSON.stringify(summary) + "\n");
}

main().catch((err) => {
  process.stdout.write(
    JSON.stringify({ error: String(err?.stack ?? err), status: err?.status ?? null, requests: sent.length }) + "\n",
  );
  process.exit(1);
});
