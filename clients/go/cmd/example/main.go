// Command example is a llamagate client in Go, built from proto/ alone: it
// streams one Generate and prints every event, and every error with the
// google.rpc details it carries, as one JSON object per line.
//
//	example ADDRESS chat PROMPT       stream a plain answer
//	example ADDRESS weather           one tool, get_weather(city), that must be called
//	example ADDRESS cancel            cancel a long answer after its first piece of content
//	example ADDRESS bad-temperature   a request the server rejects (temperature -1)
//
// Exit status: 0 when the stream ended (or was cancelled as asked), 1 after
// an error line, 2 for usage.
//
// The stubs in llamagatev1/ are generated, not committed: in clients/go,
// `go generate ./... && go build ./cmd/example`.
package main

//go:generate sh -c "cd ../.. && exec ../../buildsys/buf generate"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/llamagate/llamagate/clients/go/llamagatev1"
)

const usage = "usage: example ADDRESS chat PROMPT | weather | cancel | bad-temperature"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	request, err := requestFor(args[1], args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	conn, err := grpc.NewClient(args[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer conn.Close()
	client := pb.NewLlamaGateServiceClient(conn)
	if args[1] == "cancel" {
		err = cancelAfterFirstContent(client, request)
	} else {
		err = stream(client, request)
	}
	if err != nil {
		printError(err)
		return 1
	}
	return 0
}

func requestFor(mode string, args []string) (*pb.GenerateRequest, error) {
	user := func(text string) []*pb.Message {
		return []*pb.Message{{Role: pb.Role_ROLE_USER, Text: text}}
	}
	switch {
	case mode == "chat" && len(args) == 1:
		return &pb.GenerateRequest{
			Messages: user(args[0]),
			Sampling: &pb.Sampling{Temperature: proto.Float32(0), MaxTokens: proto.Int32(32)},
		}, nil
	case mode == "weather" && len(args) == 0:
		return &pb.GenerateRequest{
			Messages: user("What is the weather like in Paris?"),
			Sampling: &pb.Sampling{Temperature: proto.Float32(0), MaxTokens: proto.Int32(64)},
			Tools: []*pb.Tool{{
				Name:        "get_weather",
				Description: "The current weather in a city.",
				Parameters:  `{"type":"object","properties":{"city":{"type":"string","enum":["Paris"]}},"required":["city"]}`,
			}},
			ToolChoice: &pb.ToolChoice{Choice: &pb.ToolChoice_Mode{Mode: pb.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED}},
		}, nil
	case mode == "cancel" && len(args) == 0: // long enough that it is still streaming when cancelled
		return &pb.GenerateRequest{
			Messages: user("Write a very long story about a llama."),
			Sampling: &pb.Sampling{MaxTokens: proto.Int32(2000)},
		}, nil
	case mode == "bad-temperature" && len(args) == 0:
		return &pb.GenerateRequest{
			Messages: user("hi"),
			Sampling: &pb.Sampling{Temperature: proto.Float32(-1)},
		}, nil
	}
	return nil, errors.New(usage)
}

func stream(client pb.LlamaGateServiceClient, request *pb.GenerateRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	events, err := client.Generate(ctx, request)
	if err != nil {
		return err
	}
	for {
		event, err := events.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		printEvent(event)
	}
}

// cancelAfterFirstContent cancels the call's context after the first content
// delta: grpc-go resets the stream (RST_STREAM CANCEL reaches the server) and
// the next Recv returns codes.Canceled. A stream that ends before any content
// returns nil without a "cancelled" line: nothing was cancelled.
func cancelAfterFirstContent(client pb.LlamaGateServiceClient, request *pb.GenerateRequest) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := client.Generate(ctx, request)
	if err != nil {
		return err
	}
	for {
		event, err := events.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() == nil || status.Code(err) != codes.Canceled {
				return err
			}
			emit(map[string]any{"type": "cancelled", "code": code.Code(status.Code(err)).String()})
			return nil
		}
		if ctx.Err() != nil {
			continue // already received before the cancel: read on to the Canceled status
		}
		printEvent(event)
		if _, content := event.Event.(*pb.GenerateResponse_ContentDelta); content {
			cancel()
		}
	}
}

func printEvent(event *pb.GenerateResponse) {
	switch e := event.Event.(type) {
	case *pb.GenerateResponse_ContentDelta:
		emit(map[string]any{"type": "content_delta", "text": e.ContentDelta})
	case *pb.GenerateResponse_ReasoningDelta:
		emit(map[string]any{"type": "reasoning_delta", "text": e.ReasoningDelta})
	case *pb.GenerateResponse_ToolCallDelta:
		d := e.ToolCallDelta
		emit(map[string]any{
			"type": "tool_call_delta", "index": d.GetIndex(), "id": d.GetId(),
			"name": d.GetName(), "arguments_delta": d.GetArgumentsDelta(),
		})
	case *pb.GenerateResponse_Done:
		d := e.Done
		emit(map[string]any{
			"type": "done", "finish_reason": d.GetFinishReason().String(),
			"prompt_tokens": d.GetUsage().GetPromptTokens(), "completion_tokens": d.GetUsage().GetCompletionTokens(),
			"request_id": event.GetRequestId(),
		})
	default:
		emit(map[string]any{"type": "unknown"}) // an event added to the proto after this build
	}
}

// printError prints the status and the google.rpc details in the
// grpc-status-details-bin trailer, decoded by grpc-go into their Go types.
func printError(err error) {
	st := status.Convert(err)
	out := map[string]any{"type": "error", "code": code.Code(st.Code()).String(), "message": st.Message()}
	violations := []map[string]string{}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				violations = append(violations, map[string]string{"field": v.GetField(), "description": v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			metadata := map[string]string{} // {}, not null, when there is none
			maps.Copy(metadata, d.GetMetadata())
			out["reason"], out["domain"], out["metadata"] = d.GetReason(), d.GetDomain(), metadata
		case *errdetails.RetryInfo:
			out["retry_delay_ms"] = d.GetRetryDelay().AsDuration().Milliseconds()
		}
	}
	out["field_violations"] = violations
	emit(out)
}

var stdout = json.NewEncoder(os.Stdout)

func emit(line map[string]any) {
	stdout.SetEscapeHTML(false) // ">=" in a message stays readable
	if err := stdout.Encode(line); err != nil {
		panic(err) // only strings, numbers and maps of them: cannot fail
	}
}
