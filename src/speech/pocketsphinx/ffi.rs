//! Bindings to the few functions of Debian's PocketSphinx 5prealpha (`libpocketsphinx3`,
//! `libsphinxbase3`) that the recogniser uses, **loaded at run time** (`dlopen` through
//! `libloading`): the gateway builds without any -dev package and starts without the library;
//! only `engine = "pocketsphinx"` needs it, and reports clearly when it is missing.
//!
//! The function types match `/usr/include/pocketsphinx/pocketsphinx.h`, `ps_search.h` and
//! `sphinxbase/cmd_ln.h`, `ckd_alloc.h` of that release (`int32` is `int`, `int16` is
//! `short`, `size_t` is `usize`). Nothing here is called directly: the safe wrapper is
//! [`super::Decoder`], whose `unsafe` blocks state why each call is sound.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

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

/// The shared objects, by soname (the runtime packages install exactly these names).
pub const POCKETSPHINX_LIB: &str = "libpocketsphinx.so.3";
pub const SPHINXBASE_LIB: &str = "libsphinxbase.so.3";

/// The functions, resolved once. The libraries are kept loaded for the life of the process
/// (this lives in a `static`), so the function pointers never dangle.
pub struct Api {
    /// `cmd_ln_t *cmd_ln_parse_r(cmd_ln_t *inout, const arg_t *defn, int32 argc,
    /// char *argv[], int32 strict)`: parses `argc` strings (copied) into a new config when
    /// `inout` is null; null on error.
    pub cmd_ln_parse_r: unsafe extern "C" fn(
        *mut CmdLn,
        *const ArgDef,
        c_int,
        *mut *mut c_char,
        c_int,
    ) -> *mut CmdLn,
    /// `int cmd_ln_free_r(cmd_ln_t *cmdln)`: drops one reference to a config.
    pub cmd_ln_free_r: unsafe extern "C" fn(*mut CmdLn) -> c_int,
    /// `void ckd_free(void *ptr)`: `free()` for memory that sphinxbase allocated.
    pub ckd_free: unsafe extern "C" fn(*mut c_void),
    /// `arg_t const *ps_args(void)`: the decoder's static argument table.
    pub ps_args: unsafe extern "C" fn() -> *const ArgDef,
    /// `ps_decoder_t *ps_init(cmd_ln_t *config)`: takes its own reference to `config`; null
    /// when the model cannot be loaded.
    pub ps_init: unsafe extern "C" fn(*mut CmdLn) -> *mut PsDecoder,
    /// `int ps_free(ps_decoder_t *ps)`.
    pub ps_free: unsafe extern "C" fn(*mut PsDecoder) -> c_int,
    /// `int ps_set_jsgf_string(ps_decoder_t *ps, const char *name, const char *jsgf_string)`.
    pub ps_set_jsgf_string:
        unsafe extern "C" fn(*mut PsDecoder, *const c_char, *const c_char) -> c_int,
    /// `int ps_set_search(ps_decoder_t *ps, const char *name)`.
    pub ps_set_search: unsafe extern "C" fn(*mut PsDecoder, *const c_char) -> c_int,
    /// `char *ps_lookup_word(ps_decoder_t *ps, const char *word)`: a `malloc`ed pronunciation
    /// (free with `ckd_free`) or null for unknown words.
    pub ps_lookup_word: unsafe extern "C" fn(*mut PsDecoder, *const c_char) -> *mut c_char,
    /// `int ps_start_utt(ps_decoder_t *ps)`.
    pub ps_start_utt: unsafe extern "C" fn(*mut PsDecoder) -> c_int,
    /// `int ps_process_raw(ps_decoder_t *ps, int16 const *data, size_t n_samples,
    /// int no_search, int full_utt)`.
    pub ps_process_raw:
        unsafe extern "C" fn(*mut PsDecoder, *const i16, usize, c_int, c_int) -> c_int,
    /// `int ps_end_utt(ps_decoder_t *ps)`.
    pub ps_end_utt: unsafe extern "C" fn(*mut PsDecoder) -> c_int,
    /// `char const *ps_get_hyp(ps_decoder_t *ps, int32 *out_best_score)`: the best hypothesis
    /// (owned by the decoder, valid until the next call on it) or null.
    pub ps_get_hyp: unsafe extern "C" fn(*mut PsDecoder, *mut c_int) -> *const c_char,
    /// `int ps_get_n_frames(ps_decoder_t *ps)`.
    pub ps_get_n_frames: unsafe extern "C" fn(*mut PsDecoder) -> c_int,
    _pocketsphinx: libloading::Library,
    _sphinxbase: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded library, or why it could not be loaded (the same answer every time: it is tried
/// once per process).
pub fn api() -> Result<&'static Api, String> {
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn open(name: &str) -> Result<libloading::Library, String> {
    // SAFETY: loading a shared object runs its initialisers. sphinxbase and pocketsphinx are C
    // libraries whose `.init_array` holds one entry, the compiler's `frame_dummy` (checked with
    // `readelf -S`: 8 bytes): no constructor of theirs runs, loading only maps code and data. The names are sonames resolved by the
    // dynamic linker from the system's library path, as when the gateway was linked to them.
    unsafe { libloading::Library::new(name) }.map_err(|e| format!("{name}: {e}"))
}

/// Resolves `name` in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the `extern "C" fn` type that matches the C declaration of `name`.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees `T` matches the symbol's C type; the pointer is copied out
    // and stays valid while `lib` is loaded, which `Api` guarantees by owning it.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("{name}: {e}"))
}

fn load() -> Result<Api, String> {
    // sphinxbase first: pocketsphinx depends on it (the dynamic linker would load it anyway;
    // opening it by name gives its symbols a handle of their own).
    let sphinxbase = open(SPHINXBASE_LIB)?;
    let pocketsphinx = open(POCKETSPHINX_LIB)?;
    // SAFETY: each type below is transcribed from the C prototype quoted on its field, for the
    // 5prealpha ABI that sonames `.so.3` carry (Debian 0.8+5prealpha); the libraries live in
    // `Api` next to the pointers.
    unsafe {
        Ok(Api {
            cmd_ln_parse_r: sym(&sphinxbase, "cmd_ln_parse_r")?,
            cmd_ln_free_r: sym(&sphinxbase, "cmd_ln_free_r")?,
            ckd_free: sym(&sphinxbase, "ckd_free")?,
            ps_args: sym(&pocketsphinx, "ps_args")?,
            ps_init: sym(&pocketsphinx, "ps_init")?,
            ps_free: sym(&pocketsphinx, "ps_free")?,
            ps_set_jsgf_string: sym(&pocketsphinx, "ps_set_jsgf_string")?,
            ps_set_search: sym(&pocketsphinx, "ps_set_search")?,
            ps_lookup_word: sym(&pocketsphinx, "ps_lookup_word")?,
            ps_start_utt: sym(&pocketsphinx, "ps_start_utt")?,
            ps_process_raw: sym(&pocketsphinx, "ps_process_raw")?,
            ps_end_utt: sym(&pocketsphinx, "ps_end_utt")?,
            ps_get_hyp: sym(&pocketsphinx, "ps_get_hyp")?,
            ps_get_n_frames: sym(&pocketsphinx, "ps_get_n_frames")?,
            _pocketsphinx: pocketsphinx,
            _sphinxbase: sphinxbase,
        })
    }
}
