//! The spec's numbers, as a client names them, written down here a second
//! time (the server has its own in `proto`) so that a wrong value on one side
//! shows up as a failure on the other.

// Magic numbers.
/// "NBDMAGIC": the first 8 bytes a server sends, in both handshake styles.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle greeting's second word, and every option's first.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The oldstyle greeting's second word.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The first word of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_MAGIC: u32 = 0x6e8a_278c;

// Fixed lengths.
pub const GREETING_LEN: usize = 18;
pub const OLDSTYLE_GREETING_LEN: usize = 152;
pub const OPTION_HEADER_LEN: usize = 16;
pub const OPT_REPLY_HEADER_LEN: usize = 20;
pub const COMPACT_REQUEST_LEN: usize = 28;
pub const EXTENDED_REQUEST_LEN: usize = 32;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_REPLY_LEN: usize = 20;
pub const EXTENDED_REPLY_LEN: usize = 32;
/// The longest string (name, description, message) the spec allows.
pub const MAX_STRING: usize = 4096;

// Handshake flags (the server's u16) and client flags (the client's u32).
pub const FLAG_FIXED_NEWSTYLE: u16 = 0x1;
pub const FLAG_NO_ZEROES: u16 = 0x2;
pub const CFLAG_FIXED_NEWSTYLE: u32 = 0x1;
pub const CFLAG_NO_ZEROES: u32 = 0x2;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
/// NBD_OPT_STRUCTURED_REPLY.
pub const OPT_SR: u32 = 8;
pub const OPT_LIST_META: u32 = 9;
pub const OPT_SET_META: u32 = 10;
/// NBD_OPT_EXTENDED_HEADERS.
pub const OPT_EH: u32 = 11;

// Option reply types; the errors are those with bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META: u32 = 4;
pub const REP_ERROR_BIT: u32 = 0x8000_0000;
pub const ERR_UNSUP: u32 = 0x8000_0001;
pub const ERR_POLICY: u32 = 0x8000_0002;
pub const ERR_INVALID: u32 = 0x8000_0003;
pub const ERR_PLATFORM: u32 = 0x8000_0004;
pub const ERR_TLS_REQD: u32 = 0x8000_0005;
pub const ERR_UNKNOWN: u32 = 0x8000_0006;
pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
pub const ERR_BLOCK_SIZE_REQD: u32 = 0x8000_0008;
pub const ERR_TOO_BIG: u32 = 0x8000_0009;
pub const ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

// NBD_INFO_* items of INFO and GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 0x0001;
pub const TF_READ_ONLY: u16 = 0x0002;
pub const TF_SEND_FLUSH: u16 = 0x0004;
pub const TF_SEND_FUA: u16 = 0x0008;
pub const TF_ROTATIONAL: u16 = 0x0010;
pub const TF_SEND_TRIM: u16 = 0x0020;
pub const TF_SEND_WRITE_ZEROES: u16 = 0x0040;
pub const TF_SEND_DF: u16 = 0x0080;
pub const TF_CAN_MULTI_CONN: u16 = 0x0100;
pub const TF_SEND_CACHE: u16 = 0x0400;
pub const TF_SEND_FAST_ZERO: u16 = 0x0800;
pub const TF_BLOCK_STATUS_PAYLOAD: u16 = 0x1000;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
/// NBD_CMD_WRITE_ZEROES.
pub const CMD_ZERO: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const F_FUA: u16 = 0x01;
pub const F_NO_HOLE: u16 = 0x02;
pub const F_DF: u16 = 0x04;
pub const F_REQ_ONE: u16 = 0x08;
pub const F_FAST_ZERO: u16 = 0x10;
pub const F_PAYLOAD_LEN: u16 = 0x20;

// Reply chunks: the one flag, and the types; errors are those with bit 15 set.
pub const REPLY_FLAG_DONE: u16 = 0x1;
pub const T_NONE: u16 = 0;
pub const T_DATA: u16 = 1;
pub const T_HOLE: u16 = 2;
pub const T_BS: u16 = 5;
pub const T_BS_EXT: u16 = 6;
pub const T_ERROR_BIT: u16 = 0x8000;
pub const T_ERROR: u16 = 0x8001;
pub const T_ERROR_OFFSET: u16 = 0x8002;

// The errors a server may send.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The name of an error a server sent, or "unknown" (clients treat those
/// as EINVAL).
pub fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown",
    }
}

// base:allocation.
pub const BASE_ALLOCATION: &[u8] = b"base:allocation";
pub const STATE_HOLE: u64 = 0x1;
pub const STATE_ZERO: u64 = 0x2;
