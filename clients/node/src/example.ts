// A llamagate client in TypeScript, built from proto/ alone: it streams one
// Generate and prints every event, and every error with the google.rpc
// details it carries, as one JSON object per line.
//
//   node dist/example.js ADDRESS chat PROMPT       stream a plain answer
//   node dist/example.js ADDRESS weather           one tool, get_weather(city), that must be called
//   node dist/example.js ADDRESS cancel            cancel a long answer after its first piece of content
//   node dist/example.js ADDRESS bad-temperature   a request the server rejects (temperature -1)
//
// Exit status: 0 when the stream ended (or was cancelled as asked), 1 after
// an error line, 2 for usage.
// The stubs in src/gen/ are generated, not committed: `npm ci && npm run build`.
import { ChannelCredentials, ClientError, Status, createChannel, createClientFactory } from "nice-grpc";
import { BadRequest, ErrorInfo, RetryInfo, RichClientError, errorDetailsClientMiddleware } from "nice-grpc-error-details";

import {
  FinishReason,
  GenerateRequest,
  GenerateResponse,
  LlamaGateServiceDefinition,
  Message,
  Role,
  Sampling,
  ToolChoiceMode,
  finishReasonToJSON,
} from "./gen/llamagate/v1/llamagate";

const USAGE = "usage: example ADDRESS chat PROMPT | weather | cancel | bad-temperature";

const WEATHER_PARAMETERS = {
  type: "object",
  properties: { city: { type: "string", enum: ["Paris"] } },
  required: ["city"],
};

function user(text: string): Message[] {
  return [Message.fromPartial({ role: Role.ROLE_USER, text })];
}

function requestFor(mode: string, args: string[]): GenerateRequest | undefined {
  if (mode === "chat" && args.length === 1) {
    return GenerateRequest.fromPartial({
      messages: user(args[0]),
      sampling: Sampling.fromPartial({ temperature: 0, maxTokens: 32 }),
    });
  }
  if (mode === "weather" && args.length === 0) {
    return GenerateRequest.fromPartial({
      messages: user("What is the weather like in Paris?"),
      sampling: Sampling.fromPartial({ temperature: 0, maxTokens: 64 }),
      tools: [
        {
          name: "get_weather",
          description: "The current weather in a city.",
          parameters: JSON.stringify(WEATHER_PARAMETERS),
        },
      ],
      toolChoice: { choice: { $case: "mode", mode: ToolChoiceMode.TOOL_CHOICE_MODE_REQUIRED } },
    });
  }
  if (mode === "cancel" && args.length === 0) {
    // long enough that it is still streaming when cancelled
    return GenerateRequest.fromPartial({
      messages: user("Write a very long story about a llama."),
      sampling: Sampling.fromPartial({ maxTokens: 2000 }),
    });
  }
  if (mode === "bad-temperature" && args.length === 0) {
    return GenerateRequest.fromPartial({ messages: user("hi"), sampling: { temperature: -1 } });
  }
  return undefined;
}

function emit(line: object): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function printEvent(response: GenerateResponse): void {
  const event = response.event;
  switch (event?.$case) {
    case "contentDelta":
      return emit({ type: "content_delta", text: event.contentDelta });
    case "reasoningDelta":
      return emit({ type: "reasoning_delta", text: event.reasoningDelta });
    case "toolCallDelta": {
      const { index, id, name, argumentsDelta } = event.toolCallDelta;
      return emit({ type: "tool_call_delta", index, id, name, arguments_delta: argumentsDelta });
    }
    case "done": {
      const { finishReason, usage } = event.done;
      return emit({
        type: "done",
        finish_reason: finishReasonToJSON(finishReason ?? FinishReason.FINISH_REASON_UNSPECIFIED),
        prompt_tokens: usage?.promptTokens ?? 0,
        completion_tokens: usage?.completionTokens ?? 0,
        request_id: response.requestId,
      });
    }
    default:
      return emit({ type: "unknown" }); // an event added to the proto after this build
  }
}

// The error middleware decodes the grpc-status-details-bin trailer (a
// google.rpc.Status) and its Any details into typed messages.
function printError(error: ClientError): void {
  const line: Record<string, unknown> = { type: "error", code: Status[error.code], message: error.details };
  const violations: { field: string; description: string }[] = [];
  for (const detail of error instanceof RichClientError ? error.extra : []) {
    if (detail.$type === BadRequest.$type) {
      for (const v of detail.fieldViolations) violations.push({ field: v.field, description: v.description });
    } else if (detail.$type === ErrorInfo.$type) {
      Object.assign(line, { reason: detail.reason, domain: detail.domain, metadata: detail.metadata });
    } else if (detail.$type === RetryInfo.$type && detail.retryDelay) {
      const { seconds, nanos } = detail.retryDelay;
      line.retry_delay_ms = Number(seconds) * 1000 + Math.round(nanos / 1e6);
    }
  }
  line.field_violations = violations;
  emit(line);
}

async function main(argv: string[]): Promise<number> {
  const [address, mode, ...rest] = argv;
  const request = mode === undefined ? undefined : requestFor(mode, rest);
  if (address === undefined || request === undefined) {
    process.stderr.write(USAGE + "\n");
    return 2;
  }
  const channel = createChannel(address, ChannelCredentials.createInsecure());
  const client = createClientFactory().use(errorDetailsClientMiddleware).create(LlamaGateServiceDefinition, channel);
  // Aborting the signal cancels the call (grpc-js resets the stream, so the
  // server sees CANCELLED) and the pending read rejects with an AbortError.
  const cancel = new AbortController();
  const signal = AbortSignal.any([cancel.signal, AbortSignal.timeout(5 * 60_000)]);
  try {
    for await (const response of client.generate(request, { signal })) {
      if (cancel.signal.aborted) continue; // already received before the cancel
      printEvent(response);
      if (mode === "cancel" && response.event?.$case === "contentDelta") cancel.abort();
    }
    return 0; // in cancel mode: the stream ended before any content, nothing was cancelled
  } catch (error) {
    if (cancel.signal.aborted && error instanceof Error && error.name === "AbortError") {
      emit({ type: "cancelled", code: Status[Status.CANCELLED] });
      return 0;
    }
    if (!(error instanceof ClientError)) throw error;
    printError(error);
    return 1;
  } finally {
    channel.close();
  }
}

main(process.argv.slice(2)).then((status) => {
  process.exitCode = status;
});
