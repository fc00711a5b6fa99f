#!/usr/bin/env node
// The compiled CLI; `npm install` (prepare) and `npm start` build it.
import "../dist/src/main.js"
