package main

import (
	"context"
	"log"
	"net"
	"os"

	pb "chatgpt-demo/chatpb"
	"google.golang.org/grpc"
)

type server struct{ pb.UnimplementedLLMServiceServer }

func (s *server) Generate(ctx context.Context, req *pb.ChatRequest) (*pb.ChatResponse, error) {
	return &pb.ChatResponse{Reply: "Echo: " + req.Text}, nil
}

func main() {
	addr := os.Getenv("LLM_ADDR")
	if addr == "" {
		addr = ":50055"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterLLMServiceServer(s, &server{})
	log.Println("LLM server listening on", addr)
	log.Fatal(s.Serve(lis))
}
