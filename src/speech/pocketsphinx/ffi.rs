//! Hand-written bindings to the few functions of Debian's PocketSphinx 5prealpha
//! (`libpocketsphinx3`, `libsphinxbase3`) that the recogniser uses. The declarations match
//! `/usr/include/pocketsphinx/pocketsphinx.h`, `ps_search.h` and `sphinxbase/cmd_ln.h`
//! (`int32` is `int`, `int16` is `short` there). The safe wrapper is [`super::Decoder`].

use std::os::raw::{c_char, c_int, c_void};

/// Opaque `ps_decoder_t`.
#[repr(C)]
pub struct PsDecoder {
    _private: [u8; 0],
}

/// Opaque `cmd_ln_t`.
#[repr(C)]
pub struct CmdLn {
    _private: [u8; 0],
}

/// Opaque `arg_t` (argument definitions).
#[repr(C)]
pub struct ArgDef {
    _private: [u8; 0],
}

#[link(name = "sphinxbase")]
extern "C" {
    /// Parses `argc` strings (copied) into a new config when `inout` is null.
    pub fn cmd_ln_parse_r(
        inout: *mut CmdLn,
        defn: *const ArgDef,
        argc: c_int,
        argv: *mut *mut c_char,
        strict: c_int,
    ) -> *mut CmdLn;
    /// Drops one reference to a config.
    pub fn cmd_ln_free_r(cmdln: *mut CmdLn) -> c_int;
    /// `free()` for memory that sphinxbase allocated.
    pub fn ckd_free(ptr: *mut c_void);
}

#[link(name = "pocketsphinx")]
extern "C" {
    pub fn ps_args() -> *const ArgDef;
    /// Takes its own reference to `config`.
    pub fn ps_init(config: *mut CmdLn) -> *mut PsDecoder;
    pub fn ps_free(ps: *mut PsDecoder) -> c_int;
    pub fn ps_set_jsgf_string(
        ps: *mut PsDecoder,
        name: *const c_char,
        jsgf: *const c_char,
    ) -> c_int;
    pub fn ps_set_search(ps: *mut PsDecoder, name: *const c_char) -> c_int;
    /// Returns a `malloc`ed pronunciation (free with `ckd_free`) or null for unknown words.
    pub fn ps_lookup_word(ps: *mut PsDecoder, word: *const c_char) -> *mut c_char;
    pub fn ps_start_utt(ps: *mut PsDecoder) -> c_int;
    pub fn ps_process_raw(
        ps: *mut PsDecoder,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    pub fn ps_end_utt(ps: *mut PsDecoder) -> c_int;
    /// The best hypothesis (owned by the decoder, valid until the next call) or null.
    pub fn ps_get_hyp(ps: *mut PsDecoder, out_best_score: *mut c_int) -> *const c_char;
    pub fn ps_get_n_frames(ps: *mut PsDecoder) -> c_int;
}
