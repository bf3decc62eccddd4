// What a terminal (xterm.js, the emulator browsers use) shows after the bytes on stdin.
// usage: node screen.js COLS ROWS < bytes
// prints {"lines": [...], "scrollTop": n, "scrollBottom": n, "buffer": "normal"|"alternate",
//         "cursorHidden": bool, "applicationCursorKeys": bool}
const path = require('path');
const { Terminal } = require(path.join(__dirname, '..', '..', 'console', 'node_modules', '@xterm', 'headless'));
const cols = +process.argv[2], rows = +process.argv[3];
const term = new Terminal({ cols, rows, allowProposedApi: true, scrollback: 0 });
const chunks = [];
process.stdin.on('data', c => chunks.push(c));
process.stdin.on('end', () => {
  term.write(new Uint8Array(Buffer.concat(chunks)), () => {
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < rows; i++) lines.push(b.getLine(b.viewportY + i).translateToString(true));
    const core = term._core;
    const buf = core._bufferService.buffer;
    console.log(JSON.stringify({
      lines,
      scrollTop: buf.scrollTop,
      scrollBottom: buf.scrollBottom,
      buffer: b.type,
      cursorHidden: core.coreService.isCursorHidden,
      applicationCursorKeys: term.modes.applicationCursorKeysMode,
    }));
  });
});
