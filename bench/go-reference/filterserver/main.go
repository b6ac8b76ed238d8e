package main

import (
	"context"
	"log"
	"net"
	"os"
	"strings"

	pb "chatgpt-demo/chatpb"
	"google.golang.org/grpc"
)

var banned = []string{"foo"}

type server struct{ pb.UnimplementedFilterServiceServer }

func (s *server) Filter(ctx context.Context, req *pb.FilterRequest) (*pb.FilterResponse, error) {
	cleaned := strings.Join(strings.Fields(req.Text), " ")
	lower := strings.ToLower(cleaned)
	for _, w := range banned {
		if strings.Contains(lower, w) {
			return &pb.FilterResponse{Allowed: false, Cleaned: cleaned}, nil
		}
	}
	return &pb.FilterResponse{Allowed: true, Cleaned: cleaned}, nil
}

func main() {
	addr := os.Getenv("FILTER_ADDR")
	if addr == "" {
		addr = ":50052"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterFilterServiceServer(s, &server{})
	log.Println("Filter server listening on", addr)
	log.Fatal(s.Serve(lis))
}
