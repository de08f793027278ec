// A llamagate client in Java (grpc-java), built from proto/ alone: it streams
// one Generate and prints every event, and every error with the google.rpc
// details it carries, as one JSON object per line.
//
//   java -jar target/llamagate-example.jar ADDRESS chat PROMPT       stream a plain answer
//   java -jar target/llamagate-example.jar ADDRESS weather           one tool, get_weather(city), that must be called
//   java -jar target/llamagate-example.jar ADDRESS cancel            cancel a long answer after its first piece
//   java -jar target/llamagate-example.jar ADDRESS bad-temperature   a request the server rejects (temperature -1)
//
// Exit status: 0 when the stream ended (or was cancelled as asked), 1 after
// an error line, 2 for usage. The stubs (package dev.llamagate.v1) are
// generated into target/ by `mvn package`, never committed.
package dev.llamagate.example;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import dev.llamagate.v1.GenerateDone;
import dev.llamagate.v1.GenerateRequest;
import dev.llamagate.v1.GenerateResponse;
import dev.llamagate.v1.LlamaGateServiceGrpc;
import dev.llamagate.v1.LlamaGateServiceGrpc.LlamaGateServiceBlockingStub;
import dev.llamagate.v1.Message;
import dev.llamagate.v1.Role;
import dev.llamagate.v1.Sampling;
import dev.llamagate.v1.Tool;
import dev.llamagate.v1.ToolCallDelta;
import dev.llamagate.v1.ToolChoice;
import dev.llamagate.v1.ToolChoiceMode;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

public final class Example {
  private static final String USAGE = "usage: example ADDRESS chat PROMPT | weather | cancel | bad-temperature";
  private static final String WEATHER_PARAMETERS =
      "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"enum\":[\"Paris\"]}},\"required\":[\"city\"]}";
  private static final Gson JSON = new GsonBuilder().disableHtmlEscaping().create(); // ">=" stays readable

  private Example() {}

  public static void main(String[] args) throws InterruptedException {
    System.exit(run(args));
  }

  static int run(String[] args) throws InterruptedException {
    GenerateRequest request = args.length < 2 ? null : requestFor(args[1], List.of(args).subList(2, args.length));
    if (request == null) {
      System.err.println(USAGE);
      return 2;
    }
    ManagedChannel channel = Grpc.newChannelBuilder(args[0], InsecureChannelCredentials.create()).build();
    try {
      LlamaGateServiceBlockingStub stub =
          LlamaGateServiceGrpc.newBlockingStub(channel).withDeadlineAfter(5, TimeUnit.MINUTES);
      return args[1].equals("cancel") ? cancelAfterFirstContent(stub, request) : stream(stub, request);
    } catch (StatusRuntimeException error) {
      printError(error);
      return 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  static GenerateRequest requestFor(String mode, List<String> args) {
    GenerateRequest.Builder request = GenerateRequest.newBuilder();
    switch (mode) {
      case "chat":
        if (args.size() != 1) return null;
        return request.addMessages(user(args.get(0)))
            .setSampling(Sampling.newBuilder().setTemperature(0).setMaxTokens(32)).build();
      case "weather":
        if (!args.isEmpty()) return null;
        return request.addMessages(user("What is the weather like in Paris?"))
            .setSampling(Sampling.newBuilder().setTemperature(0).setMaxTokens(64))
            .addTools(Tool.newBuilder().setName("get_weather").setDescription("The current weather in a city.")
                .setParameters(WEATHER_PARAMETERS))
            .setToolChoice(ToolChoice.newBuilder().setMode(ToolChoiceMode.TOOL_CHOICE_MODE_REQUIRED)).build();
      case "cancel": // long enough that it is still streaming when cancelled
        if (!args.isEmpty()) return null;
        return request.addMessages(user("Write a very long story about a llama."))
            .setSampling(Sampling.newBuilder().setMaxTokens(2000)).build();
      case "bad-temperature":
        if (!args.isEmpty()) return null;
        return request.addMessages(user("hi")).setSampling(Sampling.newBuilder().setTemperature(-1)).build();
      default:
        return null;
    }
  }

  private static Message user(String text) {
    return Message.newBuilder().setRole(Role.ROLE_USER).setText(text).build();
  }

  static int stream(LlamaGateServiceBlockingStub stub, GenerateRequest request) {
    for (Iterator<GenerateResponse> events = stub.generate(request); events.hasNext(); ) {
      printEvent(events.next());
    }
    return 0;
  }

  /**
   * A blocking call runs in the io.grpc.Context current when it starts:
   * cancelling that context cancels the call (RST_STREAM to the server), and
   * the iterator then ends with CANCELLED.
   */
  static int cancelAfterFirstContent(LlamaGateServiceBlockingStub stub, GenerateRequest request) {
    try (Context.CancellableContext call = Context.current().withCancellation()) {
      Context previous = call.attach();
      try {
        Iterator<GenerateResponse> events = stub.generate(request);
        while (events.hasNext()) {
          GenerateResponse event = events.next();
          if (call.isCancelled()) continue; // already received before the cancel: read on to CANCELLED
          printEvent(event);
          if (event.getEventCase() == GenerateResponse.EventCase.CONTENT_DELTA) {
            call.cancel(null);
          }
        }
        return 0; // the stream ended before any content: nothing was cancelled, so no "cancelled" line
      } catch (StatusRuntimeException error) {
        if (!call.isCancelled() || error.getStatus().getCode() != Status.Code.CANCELLED) throw error;
        emit(fields("type", "cancelled", "code", error.getStatus().getCode().name()));
        return 0;
      } finally {
        call.detach(previous);
      }
    }
  }

  static void printEvent(GenerateResponse event) {
    Map<String, Object> line = new LinkedHashMap<>();
    switch (event.getEventCase()) {
      case CONTENT_DELTA:
        line.put("type", "content_delta");
        line.put("text", event.getContentDelta());
        break;
      case REASONING_DELTA:
        line.put("type", "reasoning_delta");
        line.put("text", event.getReasoningDelta());
        break;
      case TOOL_CALL_DELTA:
        ToolCallDelta delta = event.getToolCallDelta();
        line.put("type", "tool_call_delta");
        line.put("index", delta.getIndex());
        line.put("id", delta.getId());
        line.put("name", delta.getName());
        line.put("arguments_delta", delta.getArgumentsDelta());
        break;
      case DONE:
        GenerateDone done = event.getDone();
        line.put("type", "done");
        line.put("finish_reason", done.getFinishReason().name());
        line.put("prompt_tokens", done.getUsage().getPromptTokens());
        line.put("completion_tokens", done.getUsage().getCompletionTokens());
        line.put("request_id", event.getRequestId());
        break;
      default:
        line.put("type", "unknown"); // an event this program does not print (server tools), or one newer than its build
    }
    emit(line);
  }

  /** The status and the google.rpc details of its grpc-status-details-bin trailer, as their Java types. */
  static void printError(StatusRuntimeException error) {
    Map<String, Object> line = new LinkedHashMap<>();
    line.put("type", "error");
    line.put("code", error.getStatus().getCode().name());
    line.put("message", error.getStatus().getDescription());
    List<Map<String, Object>> violations = new ArrayList<>();
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    for (Any detail : status == null ? List.<Any>of() : status.getDetailsList()) {
      try {
        if (detail.is(BadRequest.class)) {
          for (BadRequest.FieldViolation v : detail.unpack(BadRequest.class).getFieldViolationsList()) {
            violations.add(fields("field", v.getField(), "description", v.getDescription()));
          }
        } else if (detail.is(ErrorInfo.class)) {
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          line.put("reason", info.getReason());
          line.put("domain", info.getDomain());
          line.put("metadata", new TreeMap<>(info.getMetadataMap()));
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          line.put("retry_delay_ms", delay.getSeconds() * 1000 + delay.getNanos() / 1_000_000);
        }
      } catch (InvalidProtocolBufferException e) {
        line.put("undecodable_detail", detail.getTypeUrl()); // is() matched, so only a corrupt trailer gets here
      }
    }
    line.put("field_violations", violations);
    emit(line);
  }

  /** A JSON object's fields in the order given (Map.of has none). */
  private static Map<String, Object> fields(Object... keysAndValues) {
    Map<String, Object> fields = new LinkedHashMap<>();
    for (int i = 0; i < keysAndValues.length; i += 2) {
      fields.put((String) keysAndValues[i], keysAndValues[i + 1]);
    }
    return fields;
  }

  private static void emit(Map<String, ?> line) {
    System.out.println(JSON.toJson(line));
    System.out.flush();
  }
}
