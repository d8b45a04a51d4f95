// WASI preview 1 for a work unit in a browser: the sandbox contract (see DESIGN.md), in
// JavaScript, answering as the native client's wasmtime-wasi answers, so that one module
// computes the same bytes in a tab as on a volunteer's machine.
//
// What a module gets, and nothing else:
// - its arguments (after the program name `main.wasm`), no environment variables;
// - standard input from memory; standard output kept up to the output limit (a write past
//   it ends the run, as the native client's pipe does); the last 4 KiB of standard error;
// - `/input` (read-only) holding its input files, and its scratch directory, `/scratch`
//   and `.`, in memory, within the scratch limit;
// - random numbers seeded from the work unit, a wall clock frozen at the epoch and a
//   monotonic clock that steps one microsecond per reading (sandbox/src/determinism.rs);
// - `poll_oneoff` sleeping for real (so a sleeper meets the wall-clock limit), everything
//   else about sockets, links and signals refused as wasmtime-wasi refuses it.
//
// Where wasmtime-wasi's answer comes from the host's file system (inode numbers, time
// stamps, the order of directory entries), no two native hosts agree either; this keeps
// them fixed: inode numbers in order of creation, times zero, entries sorted by name.

import { sha256 } from './sha256.js';
import { compareUtf8 } from './tar.js';

export const ERRNO = {
  SUCCESS: 0, ACCES: 2, AGAIN: 6, BADF: 8, BUSY: 10, EXIST: 20, FAULT: 21, FBIG: 22, ILSEQ: 25, INTR: 27, INVAL: 28,
  IO: 29, ISDIR: 31, LOOP: 32, NAMETOOLONG: 37, NOENT: 44, NOMEM: 48, NOSYS: 52, NOTDIR: 54,
  NOTEMPTY: 55, NOTSOCK: 57, NOTSUP: 58, OVERFLOW: 61, PERM: 63, RANGE: 68, SPIPE: 70, XDEV: 75,
};

const FILETYPE = { UNKNOWN: 0, DIRECTORY: 3, REGULAR_FILE: 4 };
const RIGHT = {
  FD_DATASYNC: 1n << 0n, FD_READ: 1n << 1n, FD_SEEK: 1n << 2n, FD_FDSTAT_SET_FLAGS: 1n << 3n,
  FD_SYNC: 1n << 4n, FD_TELL: 1n << 5n, FD_WRITE: 1n << 6n, FD_ADVISE: 1n << 7n,
  FD_ALLOCATE: 1n << 8n, PATH_CREATE_DIRECTORY: 1n << 9n, PATH_CREATE_FILE: 1n << 10n,
  PATH_LINK_SOURCE: 1n << 11n, PATH_LINK_TARGET: 1n << 12n, PATH_OPEN: 1n << 13n,
  FD_READDIR: 1n << 14n, PATH_READLINK: 1n << 15n, PATH_RENAME_SOURCE: 1n << 16n,
  PATH_RENAME_TARGET: 1n << 17n, PATH_FILESTAT_GET: 1n << 18n, PATH_FILESTAT_SET_SIZE: 1n << 19n,
  PATH_FILESTAT_SET_TIMES: 1n << 20n, FD_FILESTAT_GET: 1n << 21n, FD_FILESTAT_SET_SIZE: 1n << 22n,
  FD_FILESTAT_SET_TIMES: 1n << 23n, PATH_SYMLINK: 1n << 24n, PATH_REMOVE_DIRECTORY: 1n << 25n,
  PATH_UNLINK_FILE: 1n << 26n, POLL_FD_READWRITE: 1n << 27n,
};
const ALL_RIGHTS = (1n << 30n) - 1n;
// What wasmtime-wasi says a preopened directory may do, and what it may pass on.
const PREOPEN_RIGHTS = RIGHT.PATH_CREATE_DIRECTORY | RIGHT.PATH_CREATE_FILE | RIGHT.PATH_LINK_SOURCE
  | RIGHT.PATH_LINK_TARGET | RIGHT.PATH_OPEN | RIGHT.FD_READDIR | RIGHT.PATH_READLINK
  | RIGHT.PATH_RENAME_SOURCE | RIGHT.PATH_RENAME_TARGET | RIGHT.PATH_SYMLINK
  | RIGHT.PATH_REMOVE_DIRECTORY | RIGHT.PATH_UNLINK_FILE | RIGHT.PATH_FILESTAT_GET
  | RIGHT.PATH_FILESTAT_SET_TIMES | RIGHT.FD_FILESTAT_GET | RIGHT.FD_FILESTAT_SET_TIMES;
const PREOPEN_INHERITING = PREOPEN_RIGHTS | RIGHT.FD_DATASYNC | RIGHT.FD_READ | RIGHT.FD_SEEK
  | RIGHT.FD_FDSTAT_SET_FLAGS | RIGHT.FD_SYNC | RIGHT.FD_TELL | RIGHT.FD_WRITE | RIGHT.FD_ADVISE
  | RIGHT.FD_ALLOCATE | RIGHT.FD_FILESTAT_GET | RIGHT.FD_FILESTAT_SET_SIZE
  | RIGHT.FD_FILESTAT_SET_TIMES | RIGHT.POLL_FD_READWRITE;

const OFLAG = { CREAT: 1, DIRECTORY: 2, EXCL: 4, TRUNC: 8 };
const FDFLAG = { APPEND: 1, DSYNC: 2, NONBLOCK: 4, RSYNC: 8, SYNC: 16 };
const FSTFLAG = { ATIM: 1, ATIM_NOW: 2, MTIM: 4, MTIM_NOW: 8 };

/** wasmtime's budget for what one WASI call may copy in or out (its `hostcall_fuel`). */
const HOSTCALL_FUEL = 128 * 1024 * 1024;
/** The most a stream read hands out at once in wasmtime-wasi (its MAX_READ_SIZE_ALLOC). */
const STREAM_READ = 64 * 1024;
/** The most random bytes one call may ask for (wasmtime-wasi's DEFAULT_MAX_SIZE). */
const RANDOM_MAX = 64 * 1024 * 1024;
/** How much of standard error is kept (the protocol's MAX_STDERR_BYTES). */
const STDERR_KEPT = 4096;
/** wasmtime-wasi writes standard output in pieces of this size; the limit is checked on each. */
const STDOUT_CHUNK = 4096;
/** Linux's longest file name and path, which a native client's host enforces. */
const NAME_MAX = 255;
const PATH_MAX = 4096;

// The scratch directory's own bounds (sandbox/src/lib.rs, `scratch_bytes`): past them it counts
// as over its limit. A native host cannot walk a tree whose paths exceed its own PATH_MAX, with
// the scratch directory's location in front (`/var/lib/wasmgrid/tasks/.../scratch/`); a tab
// allows for such a prefix.
export const MAX_SCRATCH_DEPTH = 64;
export const MAX_SCRATCH_ENTRIES = 100000;
export const MAX_SCRATCH_PATH_BYTES = PATH_MAX - 256;

/** Scratch entries that are the module's own business, not output. */
const NOT_OUTPUT = ['checkpoint', 'progress'];

/** The module called `proc_exit`. */
export class Exit {
  constructor(code) {
    this.code = code;
  }
}

/** A WASI call trapped, as wasmtime-wasi traps (an out-of-bounds pointer...): `message` is its reason. */
export class Trap extends Error {}

/** The module broke a limit inside a WASI call: `limit` is `output` or `scratch`. */
export class LimitBroken extends Error {
  constructor(limit) {
    super(`${limit} limit broken`);
    this.limit = limit;
  }
}

/** An errno, thrown inside a call and returned to the module. */
class Errno {
  constructor(code) {
    this.code = code;
  }
}

const fail = (code) => {
  throw new Errno(code);
};

// Arguments that name an enum or flags are converted before a call runs, and a value out of
// range traps, in wasmtime-wasi's words: first the conversion to the type's width, then the
// check of its cases or bits.
const OUT_OF_RANGE = 'out of range integral type conversion attempted';

/** An enum argument of `bits` width with `cases` cases. */
function enumArg(value, bits, cases, name) {
  if (value < 0 || value >= 2 ** bits) throw new Trap(OUT_OF_RANGE);
  if (value >= cases) throw new Trap(`Invalid enum value ${name}`);
  return value;
}

/** A flags argument of `bits` width (a number, or a BigInt for 64) whose defined bits are `mask`. */
function flagsArg(value, bits, mask, name) {
  if (bits === 64) {
    if (value < 0n) throw new Trap(OUT_OF_RANGE);
    if (value & ~mask) throw new Trap(`Invalid flag value ${name}`);
    return value;
  }
  if (value < 0 || value >= 2 ** bits) throw new Trap(OUT_OF_RANGE);
  if (value & ~mask) throw new Trap(`Invalid flag value ${name}`);
  return value;
}

const CLOCKID = (id) => enumArg(id, 32, 4, 'Clockid');
const LOOKUPFLAGS = (flags) => flagsArg(flags, 32, 1, 'Lookupflags');
const FDFLAGS = (flags) => flagsArg(flags, 16, 0x1f, 'Fdflags');
const FSTFLAGS = (flags) => flagsArg(flags, 16, 0xf, 'Fstflags');
const RIGHTS = (rights) => flagsArg(rights, 64, ALL_RIGHTS, 'Rights');

let nextInode = 1n;

class FileNode {
  constructor(data = new Uint8Array(0)) {
    this.data = data;
    this.size = data.length;
    this.ino = nextInode++;
  }

  bytes() {
    return this.data.subarray(0, this.size);
  }

  /** Makes room for `size` bytes, zero-filled past the old end. */
  resize(size) {
    if (size > this.data.length) {
      const grown = new Uint8Array(Math.max(size, this.data.length * 2, 64));
      grown.set(this.data.subarray(0, this.size));
      this.data = grown;
    } else if (size > this.size) {
      this.data.fill(0, this.size, size);
    }
    this.size = size;
  }
}

class DirNode {
  constructor() {
    this.entries = new Map();
    this.ino = nextInode++;
    this.parent = null;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * One run's WASI: `imports()` for `wasi_snapshot_preview1`, then, once the module has
 * instantiated, `start(memory)`. After the run: `stdout`, `stderr`, `outputFiles()` and
 * `scratchWithinLimits()`.
 */
export class Wasi {
  /**
   * args: strings after the program name; stdin: bytes; inputs: [{ name, data }];
   * seed: the work unit's seed (a BigInt); stdoutLimit and scratchLimit: bytes;
   * onProgress(fraction): the module wrote its fraction done to `progress`;
   * onCall(): the module called WASI (a moment to read its fuel counter).
   */
  constructor({ args, stdin, inputs, seed, stdoutLimit, scratchLimit, onProgress = () => {}, onCall = () => {} }) {
    this.args = ['main.wasm', ...args].map((arg) => encoder.encode(arg));
    this.stdinBytes = stdin;
    this.stdinAt = 0;
    this.stdoutParts = [];
    this.stdoutLength = 0;
    this.stdoutLimit = stdoutLimit;
    this.stderrBytes = new Uint8Array(0);
    this.scratchLimit = scratchLimit;
    this.scratchBytes = 0;
    this.scratchEntries = 0;
    this.onProgress = onProgress;
    this.onCall = onCall;
    this.random = new SeededRandom(seed);
    this.monotonicReadings = 0n;
    this.memory = null;

    const input = new DirNode();
    for (const file of inputs) input.entries.set(file.name, new FileNode(file.data));
    this.scratch = new DirNode();
    // Descriptors as wasmtime-wasi numbers them: stdio, then the preopens in order.
    this.fds = new Map([
      [0, { kind: 'stdin' }],
      [1, { kind: 'stdout' }],
      [2, { kind: 'stderr' }],
      [3, { kind: 'dir', node: input, preopen: '/input', writable: false }],
      [4, { kind: 'dir', node: this.scratch, preopen: '/scratch', writable: true }],
      [5, { kind: 'dir', node: this.scratch, preopen: '.', writable: true }],
    ]);
    this.freeFds = [];
  }

  get stdout() {
    const out = new Uint8Array(this.stdoutLength);
    let at = 0;
    for (const part of this.stdoutParts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  get stderr() {
    return this.stderrBytes;
  }

  /** Regular files under the scratch directory, as [{ path, data }], but checkpoints and progress. */
  outputFiles() {
    const files = [];
    const walk = (dir, prefix) => {
      for (const [name, node] of dir.entries) {
        if (prefix === '' && NOT_OUTPUT.includes(name)) continue;
        if (node instanceof DirNode) walk(node, `${prefix}${name}/`);
        else files.push({ path: `${prefix}${name}`, data: node.bytes() });
      }
    };
    walk(this.scratch, '');
    return files;
  }

  /** Whether the scratch directory is within its limit and bounds, as the native client counts. */
  scratchWithinLimits() {
    let entries = 0;
    const within = (dir, depth, pathBytes) => {
      if (depth > MAX_SCRATCH_DEPTH) return false;
      for (const [name, node] of dir.entries) {
        entries++;
        const path = pathBytes + encoder.encode(name).length + 1;
        if (entries > MAX_SCRATCH_ENTRIES || path > MAX_SCRATCH_PATH_BYTES) return false;
        if (node instanceof DirNode && !within(node, depth + 1, path)) return false;
      }
      return true;
    };
    return this.scratchBytes <= this.scratchLimit && within(this.scratch, 0, 0);
  }

  start(memory) {
    this.memory = memory;
  }

  /** The `wasi_snapshot_preview1` functions, each turning a thrown errno into its return value. */
  imports() {
    const calls = {};
    for (const name of CALLS) {
      const call = this[name].bind(this);
      calls[name] = (...args) => {
        this.onCall();
        this.fuel = HOSTCALL_FUEL;
        try {
          return call(...args) ?? ERRNO.SUCCESS;
        } catch (error) {
          if (error instanceof Errno) return error.code;
          throw error;
        }
      };
    }
    return calls;
  }

  // --- guest memory ------------------------------------------------------------------------

  /** Checks a guest region as wiggle does before it reads or writes it. */
  region(pointer, length, align = 1) {
    if (this.memory === null) throw new Trap('missing required memory export');
    pointer >>>= 0;
    if (pointer % align !== 0) {
      throw new Trap(`Pointer not aligned to ${align}: Region { start: ${pointer}, len: ${length} }`);
    }
    if (pointer + length > 0xffffffff) throw new Trap('Pointer overflow');
    if (pointer + length > this.memory.buffer.byteLength) {
      throw new Trap(`Pointer out of bounds: Region { start: ${pointer}, len: ${length} }`);
    }
    return pointer;
  }

  view() {
    return new DataView(this.memory.buffer);
  }

  readBytes(pointer, length) {
    pointer = this.region(pointer, length);
    return new Uint8Array(this.memory.buffer, pointer, length);
  }

  writeBytes(pointer, bytes) {
    pointer = this.region(pointer, bytes.length);
    new Uint8Array(this.memory.buffer).set(bytes, pointer);
  }

  writeU32(pointer, value) {
    this.view().setUint32(this.region(pointer, 4, 4), value, true);
  }

  writeU64(pointer, value) {
    this.view().setBigUint64(this.region(pointer, 8, 8), BigInt(value), true);
  }

  /** Counts `bytes` against the call's copying budget, as wasmtime-wasi does. */
  consume(bytes) {
    if (bytes > this.fuel) fail(ERRNO.NOMEM);
    this.fuel -= bytes;
  }

  /** The first non-empty buffer of an iovec array, as [pointer, length] (wasmtime-wasi uses only it). */
  firstBuffer(iovs, count) {
    count >>>= 0;
    this.consume(count * 8);
    this.region(iovs, count * 8, 4);
    const view = this.view();
    for (let i = 0; i < count; i++) {
      const at = (iovs >>> 0) + i * 8;
      const length = view.getUint32(at + 4, true);
      if (length === 0) continue;
      this.consume(length);
      return [view.getUint32(at, true), length];
    }
    return [0, 0];
  }

  readString(pointer, length) {
    length >>>= 0;
    this.consume(length);
    try {
      return decoder.decode(this.readBytes(pointer, length));
    } catch (error) {
      if (error instanceof TypeError) fail(ERRNO.ILSEQ);
      throw error;
    }
  }

  // --- descriptors -------------------------------------------------------------------------

  descriptor(fd) {
    const descriptor = this.fds.get(fd >>> 0);
    if (!descriptor) fail(ERRNO.BADF);
    return descriptor;
  }

  file(fd) {
    const descriptor = this.descriptor(fd);
    if (descriptor.kind !== 'file') fail(ERRNO.BADF);
    return descriptor;
  }

  dir(fd) {
    const descriptor = this.descriptor(fd);
    if (descriptor.kind !== 'dir') fail(ERRNO.BADF);
    return descriptor;
  }

  /** A file's descriptor for seeking: standard streams cannot seek. */
  seekable(fd) {
    const descriptor = this.descriptor(fd);
    if (['stdin', 'stdout', 'stderr'].includes(descriptor.kind)) fail(ERRNO.SPIPE);
    if (descriptor.kind !== 'file') fail(ERRNO.BADF);
    return descriptor;
  }

  /** Files or directories, not the standard streams. */
  fsDescriptor(fd) {
    const descriptor = this.descriptor(fd);
    if (descriptor.kind !== 'file' && descriptor.kind !== 'dir') fail(ERRNO.BADF);
    return descriptor;
  }

  /** The lowest number never handed out, or the highest one given back (wasmtime-wasi's order). */
  push(descriptor) {
    let fd;
    if (this.freeFds.length > 0) {
      this.freeFds.sort((a, b) => a - b);
      fd = this.freeFds.pop();
    } else {
      fd = this.fds.size === 0 ? 0 : Math.max(...this.fds.keys()) + 1;
    }
    this.fds.set(fd, descriptor);
    return fd;
  }

  // --- paths -------------------------------------------------------------------------------

  /**
   * Resolves `path` under a directory descriptor, never above it: { parent, name, node } where
   * `node` is undefined when the last component does not exist, and `trailingSlash` when the
   * path ends in `/` (so it must name a directory).
   */
  resolve(dir, path) {
    if (path.length === 0) fail(ERRNO.NOENT);
    if (encoder.encode(path).length >= PATH_MAX) fail(ERRNO.NAMETOOLONG);
    if (path.includes('\0')) fail(ERRNO.INVAL);
    if (path.startsWith('/')) fail(ERRNO.PERM);
    const components = path.split('/');
    const trailingSlash = components.length > 1 && components[components.length - 1] === '';
    const parts = components.filter((part) => part !== '' && part !== '.');
    const stack = [dir.node];
    let last = '.';
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i];
      if (encoder.encode(part).length > NAME_MAX) fail(ERRNO.NAMETOOLONG);
      const current = stack[stack.length - 1];
      const isLast = i === parts.length - 1;
      if (part === '..') {
        if (stack.length === 1) fail(ERRNO.PERM);
        stack.pop();
        if (isLast) last = '..';
        continue;
      }
      const child = current.entries.get(part);
      if (isLast) {
        last = part;
        break;
      }
      if (child === undefined) fail(ERRNO.NOENT);
      if (!(child instanceof DirNode)) fail(ERRNO.NOTDIR);
      stack.push(child);
    }
    if (last === '.' || last === '..') {
      // The path names a directory itself (`.`, `a/..`), which has no entry to create or remove.
      const node = stack[stack.length - 1];
      return { parent: null, name: last, node, trailingSlash: true };
    }
    const parent = stack[stack.length - 1];
    return { parent, name: last, node: parent.entries.get(last), trailingSlash };
  }

  /** Where entries may be created or removed: a writable directory. */
  mutable(dir) {
    if (!dir.writable) fail(ERRNO.PERM);
  }

  /**
   * Counts a new entry under `parent`; a tree deeper or larger than the scratch directory's
   * bounds (see scratchWithinLimits) ends the run.
   */
  adding(parent, name, isDir) {
    let depth = 0;
    let pathBytes = encoder.encode(name).length;
    for (let node = parent; node.parent !== null; node = node.parent) {
      depth++;
      pathBytes += node.nameBytes + 1;
    }
    this.scratchEntries++;
    if ((isDir && depth + 1 > MAX_SCRATCH_DEPTH) || pathBytes > MAX_SCRATCH_PATH_BYTES
        || this.scratchEntries > MAX_SCRATCH_ENTRIES) {
      throw new LimitBroken('scratch');
    }
  }

  growScratch(file, size) {
    const grown = this.scratchBytes - file.size + size;
    if (grown > this.scratchLimit) throw new LimitBroken('scratch');
    file.resize(size);
    this.scratchBytes = grown;
  }

  // --- the calls -----------------------------------------------------------------------------

  args_get(argv, argvBuffer) {
    let at = argvBuffer >>> 0;
    this.args.forEach((arg, i) => {
      this.writeU32(argv + i * 4, at);
      this.writeBytes(at, arg);
      this.writeBytes(at + arg.length, [0]);
      at += arg.length + 1;
    });
  }

  args_sizes_get(count, size) {
    const bytes = this.args.reduce((sum, arg) => sum + arg.length + 1, 0);
    this.writeU32(count, this.args.length);
    this.writeU32(size, bytes);
  }

  environ_get() {}

  environ_sizes_get(count, size) {
    this.writeU32(count, 0);
    this.writeU32(size, 0);
  }

  clock_res_get(id, result) {
    CLOCKID(id);
    if (id === 0) this.writeU64(result, 1000000000n);
    else if (id === 1) this.writeU64(result, 1000n);
    else fail(ERRNO.BADF);
  }

  clock_time_get(id, _precision, result) {
    CLOCKID(id);
    if (id === 0) this.writeU64(result, 0n);
    else if (id === 1) this.writeU64(result, this.readMonotonic());
    else fail(ERRNO.BADF);
  }

  readMonotonic() {
    this.monotonicReadings += 1n;
    return this.monotonicReadings * 1000n;
  }

  fd_advise(fd, _offset, _length, advice) {
    enumArg(advice, 8, 6, 'Advice');
    this.file(fd);
  }

  fd_allocate(fd) {
    this.file(fd);
    fail(ERRNO.NOTSUP);
  }

  fd_close(fd) {
    this.descriptor(fd);
    this.fds.delete(fd >>> 0);
    this.freeFds.push(fd >>> 0);
  }

  fd_datasync(fd) {
    this.file(fd);
  }

  fd_sync(fd) {
    this.file(fd);
  }

  fd_fdstat_get(fd, result) {
    const descriptor = this.descriptor(fd);
    let filetype;
    let flags = 0;
    let rights;
    let inheriting;
    if (descriptor.kind === 'stdin') {
      [filetype, rights] = [FILETYPE.UNKNOWN, RIGHT.FD_READ];
      inheriting = rights;
    } else if (descriptor.kind === 'stdout' || descriptor.kind === 'stderr') {
      [filetype, rights] = [FILETYPE.UNKNOWN, RIGHT.FD_WRITE];
      inheriting = rights;
    } else if (descriptor.kind === 'dir' && descriptor.preopen) {
      [filetype, rights, inheriting] = [FILETYPE.DIRECTORY, PREOPEN_RIGHTS, PREOPEN_INHERITING];
    } else {
      rights = ALL_RIGHTS;
      if (descriptor.kind === 'dir') {
        filetype = FILETYPE.DIRECTORY;
        rights &= ~(RIGHT.FD_SEEK | RIGHT.FD_FILESTAT_SET_SIZE | RIGHT.PATH_FILESTAT_SET_SIZE);
        // Directories are opened for reading.
      } else {
        filetype = FILETYPE.REGULAR_FILE;
        if (!descriptor.read) rights &= ~(RIGHT.FD_READ | RIGHT.FD_READDIR);
        if (!descriptor.write) rights &= ~RIGHT.FD_WRITE;
        if (descriptor.append) flags |= FDFLAG.APPEND;
        if (descriptor.nonblock) flags |= FDFLAG.NONBLOCK;
      }
      if (descriptor.kind === 'dir' && !descriptor.write) rights &= ~RIGHT.FD_WRITE;
      inheriting = rights;
    }
    const view = this.view();
    const at = this.region(result, 24, 8);
    new Uint8Array(this.memory.buffer).fill(0, at, at + 24);
    view.setUint8(at, filetype);
    view.setUint16(at + 2, flags, true);
    view.setBigUint64(at + 8, rights, true);
    view.setBigUint64(at + 16, inheriting, true);
  }

  fd_fdstat_set_flags(fd, flags) {
    FDFLAGS(flags);
    const descriptor = this.file(fd);
    if (flags & (FDFLAG.DSYNC | FDFLAG.SYNC | FDFLAG.RSYNC)) fail(ERRNO.INVAL);
    descriptor.append = (flags & FDFLAG.APPEND) !== 0;
    descriptor.nonblock = (flags & FDFLAG.NONBLOCK) !== 0;
  }

  fd_fdstat_set_rights(fd, base, inheriting) {
    RIGHTS(base);
    RIGHTS(inheriting);
    this.fsDescriptor(fd);
    fail(ERRNO.NOTSUP);
  }

  writeFilestat(result, node) {
    const at = this.region(result, 64, 8);
    new Uint8Array(this.memory.buffer).fill(0, at, at + 64);
    const view = this.view();
    if (node === null) return;
    const isDir = node instanceof DirNode;
    view.setBigUint64(at, 1n, true);
    view.setBigUint64(at + 8, node.ino, true);
    view.setUint8(at + 16, isDir ? FILETYPE.DIRECTORY : FILETYPE.REGULAR_FILE);
    view.setBigUint64(at + 24, 1n, true);
    view.setBigUint64(at + 32, BigInt(isDir ? 4096 : node.size), true);
  }

  fd_filestat_get(fd, result) {
    const descriptor = this.descriptor(fd);
    this.writeFilestat(result, descriptor.node ?? null);
  }

  fd_filestat_set_size(fd, size) {
    const descriptor = this.file(fd);
    // A read-only directory's file may not change; one opened only to read cannot be
    // truncated (Linux's ftruncate says EINVAL).
    if (!descriptor.writable) fail(ERRNO.PERM);
    if (!descriptor.write) fail(ERRNO.INVAL);
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) fail(ERRNO.FBIG);
    this.growScratch(descriptor.node, Number(size));
  }

  fd_filestat_set_times(fd, _atim, _mtim, flags) {
    FSTFLAGS(flags);
    checkTimeFlags(flags);
    this.fsDescriptor(fd);
  }

  fd_read(fd, iovs, count, result) {
    const [pointer, length] = this.firstBuffer(iovs, count);
    const descriptor = this.descriptor(fd);
    let read;
    if (descriptor.kind === 'file') {
      if (!descriptor.read) fail(ERRNO.BADF);
      read = this.readFile(descriptor.node, descriptor.position, pointer, length);
      descriptor.position += read;
    } else if (descriptor.kind === 'stdin') {
      const chunk = this.stdinBytes.subarray(this.stdinAt, this.stdinAt + length);
      // An empty read of a stream that is not at its end is "interrupted" in wasmtime-wasi.
      if (chunk.length === 0 && this.stdinAt < this.stdinBytes.length) fail(ERRNO.INTR);
      this.writeBytes(pointer, chunk);
      this.stdinAt += chunk.length;
      read = chunk.length;
    } else {
      fail(ERRNO.BADF);
    }
    this.writeU32(result, read);
  }

  fd_pread(fd, iovs, count, offset, result) {
    const [pointer, length] = this.firstBuffer(iovs, count);
    const descriptor = this.descriptor(fd);
    if (descriptor.kind === 'stdin') fail(ERRNO.SPIPE);
    if (descriptor.kind !== 'file') fail(ERRNO.BADF);
    if (!descriptor.read) fail(ERRNO.BADF);
    // wasmtime-wasi reads at an offset through a stream, which hands out at most 64 KiB a
    // call (fd_read on a file reads the whole buffer).
    const read = this.readFile(descriptor.node, Number(offset), pointer, Math.min(length, STREAM_READ));
    this.writeU32(result, read);
  }

  readFile(node, position, pointer, length) {
    const chunk = node.bytes().subarray(Math.min(position, node.size), Math.min(position + length, node.size));
    this.writeBytes(pointer, chunk);
    return chunk.length;
  }

  fd_write(fd, iovs, count, result) {
    this.writeTo(fd, iovs, count, null, result);
  }

  fd_pwrite(fd, iovs, count, offset, result) {
    this.writeTo(fd, iovs, count, offset, result);
  }

  writeTo(fd, iovs, count, offset, result) {
    const [pointer, length] = this.firstBuffer(iovs, count);
    const descriptor = this.descriptor(fd);
    const data = this.readBytes(pointer, length);
    if (descriptor.kind === 'stdout' || descriptor.kind === 'stderr') {
      if (offset !== null) fail(ERRNO.SPIPE);
      if (descriptor.kind === 'stdout') this.writeStdout(data);
      else this.writeStderr(data);
    } else if (descriptor.kind === 'file') {
      if (!descriptor.write) fail(ERRNO.BADF);
      const node = descriptor.node;
      // As on Linux, a file opened to append appends, whatever the offset.
      const at = descriptor.append ? node.size : Number(offset ?? descriptor.position);
      if (at + length > node.size) this.growScratch(node, at + length);
      node.data.set(data, at);
      if (offset === null) descriptor.position = descriptor.append ? node.size : at + length;
      if (descriptor.progress) this.reportProgress(node);
    } else {
      fail(ERRNO.BADF);
    }
    this.writeU32(result, length);
  }

  writeStdout(data) {
    for (let at = 0; at < data.length; at += STDOUT_CHUNK) {
      const chunk = data.subarray(at, at + STDOUT_CHUNK);
      if (this.stdoutLength + chunk.length > this.stdoutLimit) throw new LimitBroken('output');
      this.stdoutParts.push(chunk.slice());
      this.stdoutLength += chunk.length;
    }
  }

  writeStderr(data) {
    const joined = new Uint8Array(this.stderrBytes.length + data.length);
    joined.set(this.stderrBytes);
    joined.set(data, this.stderrBytes.length);
    this.stderrBytes = joined.slice(Math.max(0, joined.length - STDERR_KEPT));
  }

  reportProgress(node) {
    let text;
    try {
      text = decoder.decode(node.bytes()).trim();
    } catch {
      return;
    }
    const fraction = Number(text);
    if (text !== '' && Number.isFinite(fraction)) this.onProgress(Math.min(1, Math.max(0, fraction)));
  }

  fd_prestat_get(fd, result) {
    const descriptor = this.descriptor(fd);
    if (descriptor.kind !== 'dir' || !descriptor.preopen) fail(ERRNO.BADF);
    const at = this.region(result, 8, 4);
    const view = this.view();
    view.setUint32(at, 0, true);
    view.setUint32(at + 4, encoder.encode(descriptor.preopen).length, true);
  }

  fd_prestat_dir_name(fd, pointer, length) {
    const descriptor = this.descriptor(fd);
    if (descriptor.kind !== 'dir' || !descriptor.preopen) fail(ERRNO.NOTDIR);
    const name = encoder.encode(descriptor.preopen);
    if (name.length > length >>> 0) fail(ERRNO.NAMETOOLONG);
    this.writeBytes(pointer, name);
  }

  fd_renumber(from, to) {
    [from, to] = [from >>> 0, to >>> 0];
    if (!this.fds.has(to) || !this.fds.has(from)) fail(ERRNO.BADF);
    if (from === to) return;
    this.fd_close(to);
    const descriptor = this.fds.get(from);
    this.fds.delete(from);
    this.freeFds.push(from);
    this.freeFds = this.freeFds.filter((fd) => fd !== to);
    this.fds.set(to, descriptor);
  }

  fd_seek(fd, offset, whence, result) {
    enumArg(whence, 8, 3, 'Whence');
    const descriptor = this.seekable(fd);
    let position;
    if (whence === 0 && offset >= 0n) position = offset;
    else if (whence === 1) position = BigInt(descriptor.position) + offset;
    else if (whence === 2) position = BigInt(descriptor.node.size) + offset;
    else fail(ERRNO.INVAL);
    if (position < 0n || position >= 1n << 64n) fail(ERRNO.INVAL);
    descriptor.position = Number(position);
    this.writeU64(result, position);
  }

  fd_tell(fd, result) {
    this.writeU64(result, this.seekable(fd).position);
  }

  fd_readdir(fd, buffer, length, cookie, result) {
    const descriptor = this.dir(fd);
    const dir = descriptor.node;
    const entries = [
      ['.', dir.ino, FILETYPE.DIRECTORY],
      ['..', dir.ino, FILETYPE.DIRECTORY],
      ...[...dir.entries].sort(([a], [b]) => compareUtf8(a, b)).map(([name, node]) =>
        [name, node.ino, node instanceof DirNode ? FILETYPE.DIRECTORY : FILETYPE.REGULAR_FILE]),
    ];
    let at = buffer >>> 0;
    let room = length >>> 0;
    const dirent = new Uint8Array(24);
    const view = new DataView(dirent.buffer);
    for (let i = Number(cookie); i < entries.length; i++) {
      const [name, ino, type] = entries[i];
      const nameBytes = encoder.encode(name);
      dirent.fill(0);
      view.setBigUint64(0, BigInt(i + 1), true);
      view.setBigUint64(8, ino, true);
      view.setUint32(16, nameBytes.length, true);
      view.setUint8(20, type);
      const direntLength = Math.min(room, 24);
      this.writeBytes(at, dirent.subarray(0, direntLength));
      at += direntLength;
      room -= direntLength;
      if (room === 0) return this.writeU32(result, length);
      const nameLength = Math.min(room, nameBytes.length);
      this.writeBytes(at, nameBytes.subarray(0, nameLength));
      at += nameLength;
      room -= nameLength;
      if (room === 0) return this.writeU32(result, length);
    }
    this.writeU32(result, (length >>> 0) - room);
  }

  path_create_directory(fd, path, length) {
    const dir = this.dir(fd);
    const target = this.resolve(dir, this.readString(path, length));
    if (target.node !== undefined) fail(ERRNO.EXIST);
    this.mutable(dir);
    this.adding(target.parent, target.name, true);
    const created = new DirNode();
    created.parent = target.parent;
    created.nameBytes = encoder.encode(target.name).length;
    target.parent.entries.set(target.name, created);
  }

  path_filestat_get(fd, flags, path, length, result) {
    LOOKUPFLAGS(flags);
    const target = this.resolve(this.dir(fd), this.readString(path, length));
    if (target.node === undefined) fail(ERRNO.NOENT);
    if (target.trailingSlash && !(target.node instanceof DirNode)) fail(ERRNO.NOTDIR);
    this.writeFilestat(result, target.node);
  }

  path_filestat_set_times(fd, flags, path, length, _atim, _mtim, fstFlags) {
    LOOKUPFLAGS(flags);
    FSTFLAGS(fstFlags);
    checkTimeFlags(fstFlags);
    const dir = this.dir(fd);
    const target = this.resolve(dir, this.readString(path, length));
    if (target.node === undefined) fail(ERRNO.NOENT);
    this.mutable(dir);
  }

  path_link(oldFd, flags, oldPath, oldLength, newFd, newPath, newLength) {
    LOOKUPFLAGS(flags);
    this.dir(oldFd);
    this.dir(newFd);
    this.readString(oldPath, oldLength);
    this.readString(newPath, newLength);
    fail(ERRNO.NOTSUP);
  }

  path_open(fd, dirflags, path, length, oflags, rightsBase, rightsInheriting, fdflags, result) {
    LOOKUPFLAGS(dirflags);
    flagsArg(oflags, 16, 0xf, 'Oflags');
    RIGHTS(rightsBase);
    RIGHTS(rightsInheriting);
    FDFLAGS(fdflags);
    const name = this.readString(path, length);
    const read = (rightsBase & RIGHT.FD_READ) !== 0n;
    let write = (rightsBase & RIGHT.FD_WRITE) !== 0n;
    const dir = this.descriptor(fd);
    if (dir.kind === 'file') fail(ERRNO.NOTDIR);
    if (dir.kind !== 'dir') fail(ERRNO.BADF);
    if (fdflags & (FDFLAG.SYNC | FDFLAG.DSYNC | FDFLAG.RSYNC)) fail(ERRNO.NOTSUP);
    const create = (oflags & OFLAG.CREAT) !== 0;
    if (create || oflags & OFLAG.TRUNC) write = true;
    if (oflags & OFLAG.DIRECTORY && oflags & (OFLAG.CREAT | OFLAG.EXCL | OFLAG.TRUNC)) fail(ERRNO.INVAL);
    if (!dir.writable && write) fail(ERRNO.PERM);
    const target = this.resolve(dir, name);
    let node = target.node;
    if (node === undefined) {
      if (!create) fail(ERRNO.NOENT);
      if (target.trailingSlash) fail(ERRNO.ISDIR);
      this.adding(target.parent, target.name, false);
      node = new FileNode();
      target.parent.entries.set(target.name, node);
    } else if (create && oflags & OFLAG.EXCL) {
      fail(ERRNO.EXIST);
    }
    let descriptor;
    if (node instanceof DirNode) {
      if (write) fail(ERRNO.ISDIR);
      descriptor = { kind: 'dir', node, preopen: null, writable: dir.writable, write: false };
    } else {
      if (oflags & OFLAG.DIRECTORY || target.trailingSlash) fail(ERRNO.NOTDIR);
      if (oflags & OFLAG.TRUNC) this.growScratch(node, 0);
      descriptor = {
        kind: 'file', node, position: 0, read: read || !write, write, writable: dir.writable,
        append: (fdflags & FDFLAG.APPEND) !== 0, nonblock: (fdflags & FDFLAG.NONBLOCK) !== 0,
        progress: dir.writable && target.parent === this.scratch && target.name === 'progress',
      };
    }
    this.writeU32(result, this.push(descriptor));
  }

  path_readlink(fd, path, length) {
    const target = this.resolve(this.dir(fd), this.readString(path, length));
    if (target.node === undefined) fail(ERRNO.NOENT);
    // Nothing here is a symbolic link.
    fail(ERRNO.INVAL);
  }

  path_remove_directory(fd, path, length) {
    const dir = this.dir(fd);
    const target = this.resolve(dir, this.readString(path, length));
    if (target.parent === null) fail(target.name === '.' ? ERRNO.INVAL : ERRNO.NOTEMPTY);
    if (target.node === undefined) fail(ERRNO.NOENT);
    if (!(target.node instanceof DirNode)) fail(ERRNO.NOTDIR);
    this.mutable(dir);
    if (target.node.entries.size > 0) fail(ERRNO.NOTEMPTY);
    target.parent.entries.delete(target.name);
    this.scratchEntries--;
  }

  path_rename(oldFd, oldPath, oldLength, newFd, newPath, newLength) {
    const oldDir = this.dir(oldFd);
    const newDir = this.dir(newFd);
    const from = this.resolve(oldDir, this.readString(oldPath, oldLength));
    const to = this.resolve(newDir, this.readString(newPath, newLength));
    if (from.parent === null || to.parent === null) fail(ERRNO.BUSY);
    if (from.node === undefined) fail(ERRNO.NOENT);
    this.mutable(oldDir);
    this.mutable(newDir);
    const moving = from.node;
    if ((from.trailingSlash || to.trailingSlash) && !(moving instanceof DirNode)) fail(ERRNO.NOTDIR);
    if (to.node === moving) return;
    if (moving instanceof DirNode) {
      for (let node = to.parent; node !== null; node = node.parent) if (node === moving) fail(ERRNO.INVAL);
      if (to.node !== undefined) {
        if (!(to.node instanceof DirNode)) fail(ERRNO.NOTDIR);
        if (to.node.entries.size > 0) fail(ERRNO.NOTEMPTY);
      }
    } else if (to.node instanceof DirNode) {
      fail(ERRNO.ISDIR);
    }
    if (to.node instanceof FileNode) this.growScratch(to.node, 0);
    if (to.node !== undefined) this.scratchEntries--;
    from.parent.entries.delete(from.name);
    to.parent.entries.set(to.name, moving);
    if (moving instanceof DirNode) {
      moving.parent = to.parent;
      moving.nameBytes = encoder.encode(to.name).length;
    }
  }

  path_symlink(oldPath, oldLength, fd, newPath, newLength) {
    this.readString(oldPath, oldLength);
    this.dir(fd);
    this.readString(newPath, newLength);
    fail(ERRNO.NOTSUP);
  }

  path_unlink_file(fd, path, length) {
    const dir = this.dir(fd);
    const target = this.resolve(dir, this.readString(path, length));
    if (target.parent === null) fail(ERRNO.ISDIR);
    if (target.node === undefined) fail(ERRNO.NOENT);
    if (target.node instanceof DirNode) fail(ERRNO.ISDIR);
    if (target.trailingSlash) fail(ERRNO.NOTDIR);
    this.mutable(dir);
    this.growScratch(target.node, 0);
    target.parent.entries.delete(target.name);
    this.scratchEntries--;
  }

  poll_oneoff(subscriptions, events, count, result) {
    count >>>= 0;
    if (count === 0) fail(ERRNO.INVAL);
    this.consume(count * 48);
    this.consume(count * 32);
    const base = this.region(subscriptions, count * 48, 8);
    this.region(events, count * 32, 8);
    const view = this.view();
    const ready = [];
    const clocks = [];
    for (let i = 0; i < count; i++) {
      const at = base + i * 48;
      const tag = view.getUint8(at + 8);
      if (tag === 0) {
        const id = view.getUint32(at + 16, true);
        let timeout = view.getBigUint64(at + 24, true);
        const absolute = (view.getUint16(at + 40, true) & 1) !== 0;
        // Only the wall clock (frozen at 0, so an absolute time is a duration) and the
        // monotonic clock can be waited on.
        if (id !== 0 && id !== 1) fail(ERRNO.INVAL);
        if (id === 1 && absolute) timeout = saturatingSub(timeout, this.readMonotonic());
        clocks.push({ index: i, timeout });
        if (timeout === 0n) ready.push(i);
      } else if (tag === 1 || tag === 2) {
        const descriptor = this.descriptor(view.getUint32(at + 16, true));
        const kinds = tag === 1 ? ['stdin', 'file'] : ['stdout', 'stderr', 'file'];
        if (!kinds.includes(descriptor.kind)) fail(ERRNO.BADF);
        ready.push(i);
      } else {
        fail(ERRNO.INVAL);
      }
    }
    if (ready.length === 0) {
      const soonest = clocks.reduce((min, clock) => (clock.timeout < min ? clock.timeout : min), clocks[0].timeout);
      sleep(Number(soonest / 1000000n));
      for (const clock of clocks) if (clock.timeout === soonest) ready.push(clock.index);
    }
    const out = this.view();
    const eventBase = events >>> 0;
    ready.sort((a, b) => a - b).forEach((index, n) => {
      const at = base + index * 48;
      const event = eventBase + n * 32;
      new Uint8Array(this.memory.buffer).fill(0, event, event + 32);
      const tag = out.getUint8(at + 8);
      out.setBigUint64(event, out.getBigUint64(at, true), true);
      out.setUint8(event + 10, tag);
      if (tag !== 0) {
        out.setBigUint64(event + 16, 1n, true);
        const descriptor = this.fds.get(out.getUint32(at + 16, true));
        if (tag === 1 && descriptor.kind === 'file' && descriptor.position >= descriptor.node.size) {
          out.setUint16(event + 24, 1, true);
        }
      }
    });
    this.writeU32(result, ready.length);
  }

  proc_exit(code) {
    if (code >>> 0 >= 126) throw new Trap('exit with invalid exit status outside of [0..126)');
    throw new Exit(code);
  }

  proc_raise(signal) {
    enumArg(signal, 8, 31, 'Signal');
    fail(ERRNO.NOTSUP);
  }

  sched_yield() {}

  random_get(pointer, length) {
    length >>>= 0;
    if (length > RANDOM_MAX) throw new Trap(`requested len ${length} exceeds limit ${RANDOM_MAX}`);
    const bytes = new Uint8Array(length);
    for (let i = 0; i < length; i++) bytes[i] = this.random.nextByte();
    this.writeBytes(pointer, bytes);
  }

  sock_accept(fd, flags) {
    FDFLAGS(flags);
    this.descriptor(fd);
    fail(ERRNO.NOTSOCK);
  }

  sock_recv(fd, _iovs, _count, flags) {
    flagsArg(flags, 16, 3, 'Riflags');
    this.descriptor(fd);
    fail(ERRNO.NOTSOCK);
  }

  sock_send(fd, _iovs, _count, flags) {
    flagsArg(flags, 16, 0, 'Siflags');
    this.descriptor(fd);
    fail(ERRNO.NOTSOCK);
  }

  sock_shutdown(fd, how) {
    flagsArg(how, 8, 3, 'Sdflags');
    this.descriptor(fd);
    fail(ERRNO.NOTSOCK);
  }
}

/** Every function of `wasi_snapshot_preview1`: a module importing anything else misses an import. */
export const CALLS = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get', 'clock_time_get',
  'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get', 'fd_fdstat_set_flags',
  'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size', 'fd_filestat_set_times', 'fd_pread',
  'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite', 'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek',
  'fd_sync', 'fd_tell', 'fd_write', 'path_create_directory', 'path_filestat_get', 'path_filestat_set_times',
  'path_link', 'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get', 'sock_accept',
  'sock_recv', 'sock_send', 'sock_shutdown',
];

function checkTimeFlags(flags) {
  if ((flags & FSTFLAG.ATIM && flags & FSTFLAG.ATIM_NOW) || (flags & FSTFLAG.MTIM && flags & FSTFLAG.MTIM_NOW)) {
    fail(ERRNO.INVAL);
  }
}

function saturatingSub(a, b) {
  return a > b ? a - b : 0n;
}

/**
 * Blocks the worker for `ms` milliseconds without using the CPU: `Atomics.wait` on memory of
 * its own, which a cross-origin isolated page (and Node) allows. Elsewhere a sleep returns at
 * once: the clocks a module sees do not move with real time, so only the wall-clock limit
 * would notice.
 */
function sleep(ms) {
  if (typeof SharedArrayBuffer !== 'function' || ms <= 0) return;
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.min(ms, 2 ** 31));
}

/**
 * The native client's random numbers (sandbox/src/determinism.rs): SHA-256 in counter mode
 * over the seed. wasmtime-wasi draws a 32-bit number for each byte a module asks for and
 * keeps its low byte, so each byte given costs four of the stream.
 */
class SeededRandom {
  constructor(seed) {
    this.prefix = new Uint8Array(18 + 8 + 8);
    this.prefix.set(encoder.encode('wasmgrid random v1'));
    new DataView(this.prefix.buffer).setBigUint64(18, BigInt.asUintN(64, seed), true);
    this.counter = 0n;
    this.block = new Uint8Array(0);
    this.used = 0;
  }

  nextStreamByte() {
    if (this.used === this.block.length) {
      new DataView(this.prefix.buffer).setBigUint64(26, this.counter, true);
      this.block = sha256(this.prefix);
      this.counter += 1n;
      this.used = 0;
    }
    return this.block[this.used++];
  }

  nextByte() {
    const byte = this.nextStreamByte();
    this.nextStreamByte();
    this.nextStreamByte();
    this.nextStreamByte();
    return byte;
  }
}
