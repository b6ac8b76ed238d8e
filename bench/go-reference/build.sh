#!/usr/bin/env bash
# Builds the seed's Go original (gateway, filterserver, tokenserver,
# llmserver), as its README describes it, into bench/go-reference/.build/bin,
# for `make bench-go`. Offline, against Debian's Go packages:
#   apt-get install golang-go golang-google-grpc-dev golang-github-gin-gonic-gin-dev \
#     golang-github-golang-protobuf-1-5-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc
# (grpc-go 1.33 there marshals through github.com/golang/protobuf: its 1.5
# release, which wraps the v2 API the generated messages use.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build="$here/.build"
gocode=/usr/share/gocode
for need in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$need" >/dev/null || missing=1
done
for dir in google.golang.org/grpc github.com/gin-gonic/gin github.com/golang/protobuf; do
  [[ -d "$gocode/src/$dir" ]] || missing=1
done
# github.com/golang/protobuf before 1.4 cannot marshal v2 messages: every call would fail.
[[ -f "$gocode/src/github.com/golang/protobuf/proto/registry.go" ]] || missing=1
if [[ -n "${missing:-}" ]]; then
  echo "the Go reference needs Go and Debian's gRPC and Gin packages:" >&2
  sed -n '5,6p' "$0" | sed 's/^#//' >&2
  exit 1
fi
src="$build/gopath/src/chatgpt-demo"
rm -rf "$build/gopath" && mkdir -p "$src/chatpb" "$build/bin"
cp -r "$here/chat.proto" "$here"/{gateway,filterserver,tokenserver,llmserver} "$src/"
protoc -I="$src" --go_out="$build/gopath/src" --go-grpc_out="$build/gopath/src" "$src/chat.proto"
for cmd in gateway filterserver tokenserver llmserver; do
  GO111MODULE=off GOPATH="$build/gopath:$gocode" GOFLAGS= go build -o "$build/bin/$cmd" "chatgpt-demo/$cmd"
done
echo "built $build/bin: gateway filterserver tokenserver llmserver ($(go version | cut -d' ' -f3))"
