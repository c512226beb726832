// The `openai` npm package against tlproxy, changed in one place: baseURL.
//
// Usage: TLPROXY_BASE_URL=http://127.0.0.1:8080/v1 node client.mjs
//
// The 429 check goes to TLPROXY_RATE_LIMIT_BASE_URL when set (the tests give it
// a proxy of its own: failures open the circuit breakers of the tier).
//
// Prints one JSON object summarising what the SDK saw; tests/clients/test_node.py
// runs it and checks the summary. Any SDK error ends the process non-zero.
import OpenAI, { NotFoundError, RateLimitError } from "openai";
import { VERSION } from "openai/version";

const baseURL = process.env.TLPROXY_BASE_URL;
if (!baseURL) {
  console.error("set TLPROXY_BASE_URL, e.g. http://127.0.0.1:8080/v1");
  process.exit(2);
}

// Count the HTTP requests the SDK makes, to see its retries.
let requests = 0;
const countingFetch = (url, init) => {
  requests += 1;
  return fetch(url, init);
};

const client = new OpenAI({ baseURL, apiKey: process.env.TLPROXY_API_KEY ?? "unused" });
const summary = { sdk: VERSION, node: process.version };

// 1. A plain completion, with the response headers.
{
  const { data, response, request_id } = await client.chat.completions
    .create({ model: "auto", messages: [{ role: "user", content: "Hello from Node!" }] })
    .withResponse();
  summary.json = {
    object: data.object,
    content: data.choices[0].message.content,
    finish_reason: data.choices[0].finish_reason,
    total_tokens: data.usage.total_tokens,
    request_id,
    tier: response.headers.get("x-tlproxy-tier"),
    model: response.headers.get("x-tlproxy-model"),
  };
}

// 2. Streaming, with the usage chunk at the end.
{
  const stream = await client.chat.completions.create({
    model: "economy",
    messages: [{ role: "user", content: "Stream a few words." }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let role = null;
  const finishReasons = [];
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices) {
      role ??= choice.delta.role ?? null;
      text += choice.delta.content ?? "";
      if (choice.finish_reason) finishReasons.push(choice.finish_reason);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  summary.stream = { chunks, role, text, finish_reasons: finishReasons, usage };
}

// 3. A tool call, then the tool's result sent back.
{
  const tools = [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Current weather in a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        },
      },
    },
  ];
  const messages = [{ role: "user", content: "What is the weather in Paris?" }];
  const first = await client.chat.completions.create({ model: "auto", messages, tools });
  const call = first.choices[0].message.tool_calls[0];
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: "18 C and sunny" });
  const second = await client.chat.completions.create({ model: "auto", messages, tools });
  summary.tools = {
    finish_reason: first.choices[0].finish_reason,
    name: call.function.name,
    arguments: JSON.parse(call.function.arguments),
    answer: second.choices[0].message.content,
  };
}

// 4. Embeddings: the SDK asks for base64 and decodes it to floats.
{
  const result = await client.embeddings.create({
    model: "text-embedding-3-small",
    input: ["first text", "second text"],
  });
  summary.embeddings = {
    count: result.data.length,
    dimensions: result.data[0].embedding.length,
    is_array: Array.isArray(result.data[0].embedding),
  };
}

// 5. A 429 with retry-after: the SDK retries as it would against OpenAI.
{
  const retrying = new OpenAI({
    baseURL: process.env.TLPROXY_RATE_LIMIT_BASE_URL ?? baseURL,
    apiKey: "unused",
    maxRetries: 1,
    fetch: countingFetch,
  });
  const started = Date.now();
  let error = null;
  try {
    await retrying.chat.completions.create({
      model: "auto", messages: [{ role: "user", content: "Busy? [sim:status=429]" }],
    });
  } catch (exc) {
    error = exc;
  }
  summary.rate_limit = {
    error: error?.constructor?.name ?? null,
    is_rate_limit_error: error instanceof RateLimitError,
    status: error?.status ?? null,
    requests,
    elapsed_ms: Date.now() - started,
    request_id: error?.requestID ?? null,
  };
}

// 6. An endpoint the proxy does not serve: NotFoundError, with a message in words.
{
  let error = null;
  try {
    await client.images.generate({ model: "gpt-image-1", prompt: "a cat" });
  } catch (exc) {
    error = exc;
  }
  summary.unsupported = {
    is_not_found_error: error instanceof NotFoundError,
    status: error?.status ?? null,
    code: error?.code ?? null,
    message: error?.error?.message ?? null,
  };
}

console.log(JSON.stringify(summary));
