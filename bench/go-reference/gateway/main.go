package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	pb "chatgpt-demo/chatpb"
	"github.com/gin-gonic/gin"
	"google.golang.org/grpc"
)

func env(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func dial(addr string) *grpc.ClientConn {
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	return conn
}

type chatReq struct {
	UserID string `json:"user_id"`
	Text   string `json:"text"`
}

func main() {
	filter := pb.NewFilterServiceClient(dial(env("FILTER_ADDR", "127.0.0.1:50052")))
	token := pb.NewTokenServiceClient(dial(env("TOKEN_ADDR", "127.0.0.1:50051")))
	llm := pb.NewLLMServiceClient(dial(env("LLM_ADDR", "127.0.0.1:50055")))

	r := gin.Default()
	r.GET("/health", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
	r.POST("/chat", func(c *gin.Context) {
		var req chatReq
		if err := c.ShouldBindJSON(&req); err != nil || req.UserID == "" {
			c.JSON(http.StatusBadRequest, gin.H{"error": "bad json or missing user_id"})
			return
		}
		ctx, cancel := context.WithTimeout(c.Request.Context(), 3*time.Second)
		defer cancel()
		f, err := filter.Filter(ctx, &pb.FilterRequest{Text: req.Text})
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": "filter failed"})
			return
		}
		if !f.Allowed {
			c.JSON(http.StatusBadRequest, gin.H{"error": "text blocked by filter"})
			return
		}
		t, err := token.CheckAndInc(ctx, &pb.TokenRequest{UserId: req.UserID, Cost: 50})
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": "token failed"})
			return
		}
		if !t.Allowed {
			c.JSON(http.StatusTooManyRequests, gin.H{"error": "quota exceeded", "remaining": t.Remaining})
			return
		}
		l, err := llm.Generate(ctx, &pb.ChatRequest{UserId: req.UserID, Text: f.Cleaned})
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": "llm failed"})
			return
		}
		c.JSON(http.StatusOK, gin.H{"cleaned": f.Cleaned, "reply": l.Reply, "remaining": t.Remaining})
	})
	log.Fatal(r.Run(env("GATEWAY_ADDR", ":8080")))
}
