// A run's output as the native client packs it (sandbox/src/output.rs, with the `tar` crate):
// one tar archive holding `stdout` and `files/<path>` for every regular file left in the
// scratch directory, sorted by path, with fixed metadata. The bytes must be the same as the
// native client's, or the two replicas' hashes would differ: this is a port of what the
// `tar` crate writes for those entries, down to how it handles a path too long for a
// header (a GNU long-name entry, and a header that keeps what the failed attempts wrote).

const BLOCK = 512;
const encoder = new TextEncoder();

/** Thrown when the output is larger than the work unit allows. */
export class TooLarge extends Error {}

/**
 * Thrown when a name cannot be written into the archive as the `tar` crate writes it (a long
 * name whose first 100 bytes end in `..`): the native client cannot pack such an output
 * either.
 */
export class PathError extends Error {}

/**
 * The archive of `stdout` (bytes) and `files` ([{ path, data }], paths relative to the
 * scratch directory, `/`-separated), or TooLarge when their content exceeds `limit` bytes or
 * the archive exceeds it by more than `allowance` (the protocol's OUTPUT_ARCHIVE_ALLOWANCE).
 */
export function pack(stdout, files, limit, allowance) {
  const sorted = [...files].sort((a, b) => compareUtf8(a.path, b.path));
  const content = sorted.reduce((sum, file) => sum + file.data.length, stdout.length);
  if (content > limit) throw new TooLarge('output size limit exceeded');
  const parts = [];
  append(parts, 'stdout', stdout);
  for (const file of sorted) append(parts, `files/${file.path}`, file.data);
  parts.push(new Uint8Array(2 * BLOCK));
  const archive = concatenate(parts);
  if (archive.length > limit + allowance) throw new TooLarge('output size limit exceeded');
  return archive;
}

/** Orders strings as Rust orders them: by their UTF-8 bytes, which is code point order. */
export function compareUtf8(a, b) {
  const left = [...a];
  const right = [...b];
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const difference = left[i].codePointAt(0) - right[i].codePointAt(0);
    if (difference !== 0) return difference;
  }
  return left.length - right.length;
}

/** One regular file: its header (after a long-name entry, if the path needs one) and data. */
function append(parts, path, data) {
  const header = new Uint8Array(BLOCK);
  writeMagic(header, 'ustar\0', '00');
  writeNumber(header, 124, 12, data.length);
  writeOctal(header, 100, 8, 0o644);
  writeNumber(header, 136, 12, 0);
  writeNumber(header, 108, 8, 0);
  writeNumber(header, 116, 8, 0);
  header[156] = '0'.charCodeAt(0);
  setPath(parts, header, path);
  setChecksum(header);
  parts.push(header, data, new Uint8Array(padding(data.length)));
}

/**
 * The `tar` crate's `prepare_header_path`: the path in the ustar name field, or split between
 * the prefix and name fields at a `/`; failing both, a GNU long-name entry before the header,
 * and the path's first 100 bytes in the name field.
 */
function setPath(parts, header, path) {
  const bytes = encoder.encode(path);
  try {
    setUstarPath(header, path);
  } catch (error) {
    if (!(error instanceof PathError) || bytes.length < 100) throw error;
    setUstarPath(header, utf8Prefix(bytes, 100));
    const long = new Uint8Array(BLOCK);
    writeMagic(long, 'ustar ', ' \0');
    long.set(encoder.encode('././@LongLink'), 0);
    writeOctal(long, 100, 8, 0o644);
    writeNumber(long, 108, 8, 0);
    writeNumber(long, 116, 8, 0);
    writeNumber(long, 136, 12, 0);
    writeNumber(long, 124, 12, bytes.length + 1);
    long[156] = 'L'.charCodeAt(0);
    setChecksum(long);
    const name = new Uint8Array(bytes.length + 1);
    name.set(bytes);
    parts.push(long, name, new Uint8Array(padding(name.length)));
  }
}

const NAME = { offset: 0, length: 100 };
const PREFIX = { offset: 345, length: 155 };

/** The `tar` crate's `UstarHeader::set_path`; what it wrote stays written if it fails. */
function setUstarPath(header, path) {
  const bytes = encoder.encode(path);
  if (bytes.length <= NAME.length) {
    copyPath(header, NAME, path);
    return;
  }
  const components = path.split('/');
  let prefixLength;
  let prefix;
  for (let count = components.length - 1; ; count--) {
    if (count < 0) throw new PathError(`path cannot be split to be inserted into archive: ${path}`);
    prefix = components.slice(0, count).join('/');
    prefixLength = encoder.encode(prefix).length;
    if (prefixLength <= PREFIX.length) break;
  }
  copyPath(header, PREFIX, prefix);
  copyPath(header, NAME, new TextDecoder().decode(bytes.subarray(prefixLength + 1)));
}

/**
 * Writes `path`'s components joined by `/` into a field (and a `/` after them if the path
 * ends with one), stopping at the first that does not fit.
 */
function copyPath(header, field, path) {
  // Rust's `Path::components`: empty components and `.` fold away (a `.` alone stays).
  const parts = path.split('/').filter((component) => component !== '');
  const components = parts.length === 1 ? parts : parts.filter((component) => component !== '.');
  if (components.length === 0) throw new PathError('paths in archives must have at least one component');
  if (components.includes('..')) throw new PathError('paths in archives must not have `..`');
  let at = field.offset;
  const end = field.offset + field.length;
  let needsSlash = false;
  for (const component of components) {
    if (needsSlash) at = copyInto(header, at, end, encoder.encode('/'));
    at = copyInto(header, at, end, encoder.encode(component));
    needsSlash = true;
  }
  if (path.endsWith('/')) copyInto(header, at, end, encoder.encode('/'));
}

/** The `tar` crate's `copy_into`: the bytes, and a NUL after them where the field has room. */
function copyInto(header, at, end, bytes) {
  if (bytes.length > end - at) throw new PathError('provided value is too long');
  if (bytes.includes(0)) throw new PathError('provided value contains a nul byte');
  header.set(bytes, at);
  if (at + bytes.length < end) header[at + bytes.length] = 0;
  return at + bytes.length;
}

/** The longest prefix of at most `max` bytes that is valid UTF-8, as a string. */
function utf8Prefix(bytes, max) {
  let end = Math.min(max, bytes.length);
  // Back off from the middle of a multi-byte character (continuation bytes are 10xxxxxx).
  if (end < bytes.length) while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return new TextDecoder().decode(bytes.subarray(0, end));
}

function writeMagic(header, magic, version) {
  header.set(encoder.encode(magic), 257);
  header.set(encoder.encode(version), 263);
}

/** The `tar` crate's `octal_into`: digits right-aligned before a NUL, zero-filled. */
function writeOctal(header, offset, length, value) {
  const digits = value.toString(8);
  const field = '0'.repeat(Math.max(0, length - 1 - digits.length)) + digits.slice(-(length - 1));
  header.set(encoder.encode(field), offset);
  header[offset + length - 1] = 0;
}

/** The `tar` crate's `num_field_wrapper_into`: octal, or binary past what octal can hold. */
function writeNumber(header, offset, length, value) {
  if (value >= 8589934592 || (value >= 2097152 && length === 8)) {
    let remaining = BigInt(value);
    for (let i = offset + length - 1; i > offset; i--) {
      header[i] = Number(remaining & 0xffn);
      remaining >>= 8n;
    }
    header[offset] = 0x80;
  } else {
    writeOctal(header, offset, length, value);
  }
}

function setChecksum(header) {
  header.fill(' '.charCodeAt(0), 148, 156);
  const sum = header.reduce((total, byte) => total + byte, 0);
  writeOctal(header, 148, 8, sum);
}

function padding(length) {
  return (BLOCK - (length % BLOCK)) % BLOCK;
}

function concatenate(parts) {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
