# syntax=docker/dockerfile:1
# One image for every chatmesh process; the command picks which one runs:
#   docker build -t chatmesh:local .
#   docker run --rm -p 8080:8080 chatmesh:local            # the gateway
#   docker run --rm chatmesh:local token                   # token, filter, llm, history
# Every step below is also run outside Docker by test/deploy/image.test.ts
# (test/fixtures/dockerfile.ts), so keep RUN commands relative to WORKDIR;
# there, this machine's commands stand in for the apt-get line's packages.

FROM node:20-slim AS build
# better-sqlite3 compiles from source where its prebuilt binary cannot be
# fetched (no way out to its download host, or a platform it has none for).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --prefer-offline --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY gen ./gen
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM node:20-slim AS runtime
# MALLOC_MMAP_THRESHOLD_: glibc's default, fixed (src/lib/node-options.ts).
ENV HOST=0.0.0.0 \
    NODE_OPTIONS=--enable-source-maps \
    MALLOC_MMAP_THRESHOLD_=131072
WORKDIR /app
COPY package.json package-lock.json ./
# The production dependencies, as built above: no compiler in this stage.
COPY --from=build /app/node_modules ./node_modules
COPY bin ./bin
COPY --from=build /app/dist ./dist
# The embedded SQLite history's default folder (sqlite:./data/history.db),
# writable by the image's user; Compose and Kubernetes use MySQL instead.
RUN mkdir -p data && chown 1000:1000 data
# The node user of the base image (uid 1000); Kubernetes sets the same uid.
USER node
EXPOSE 8080 50051 50052 50053 50055
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "bin/chatmesh.js", "healthcheck"]
ENTRYPOINT ["node", "bin/chatmesh.js"]
CMD ["gateway"]
