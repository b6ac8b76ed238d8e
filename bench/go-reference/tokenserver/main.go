package main

import (
	"context"
	"log"
	"net"
	"os"
	"strconv"
	"sync"

	pb "chatgpt-demo/chatpb"
	"google.golang.org/grpc"
)

type server struct {
	pb.UnimplementedTokenServiceServer
	mu    sync.Mutex
	used  map[string]int64
	limit int64
}

func (s *server) CheckAndInc(ctx context.Context, req *pb.TokenRequest) (*pb.TokenResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used[req.UserId] += req.Cost
	remaining := s.limit - s.used[req.UserId]
	return &pb.TokenResponse{Allowed: remaining >= 0, Remaining: remaining}, nil
}

func main() {
	addr := os.Getenv("TOKEN_ADDR")
	if addr == "" {
		addr = ":50051"
	}
	limit := int64(200)
	if v, err := strconv.ParseInt(os.Getenv("QUOTA_LIMIT"), 10, 64); err == nil {
		limit = v
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterTokenServiceServer(s, &server{used: map[string]int64{}, limit: limit})
	log.Println("Token server listening on", addr)
	log.Fatal(s.Serve(lis))
}
