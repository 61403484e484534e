/*
 * llama_quantize_tq: llama.cpp's quantizer (`llama_model_quantize`, what
 * `llama-quantize` calls) with `--pure` semantics: every 2-D weight to one
 * type, `token_embd` to a chosen type. Needs only libllama, not the
 * `common` library that the llama-quantize tool links.
 *
 *   cc -O2 -o /tmp/llamacpp/llama_quantize_tq tools/llama_quantize_tq.c \
 *      -I/tmp/llamacpp/src/include -I/tmp/llamacpp/src/ggml/include \
 *      -L/tmp/llamacpp/build/bin -lllama -lggml -lggml-base \
 *      -Wl,-rpath,/tmp/llamacpp/build/bin
 *   /tmp/llamacpp/llama_quantize_tq IN.gguf OUT.gguf tq1_0 q6_k
 *
 * Equivalent to `llama-quantize --pure --token-embedding-type q6_k IN OUT TQ1_0`.
 *
 */

#include "llama.h"

#include <stdio.h>
#include <string.h>

static int ftype_of(const char * s, enum llama_ftype * out) {
    if (strcmp(s, "tq1_0") == 0) { *out = LLAMA_FTYPE_MOSTLY_TQ1_0; return 0; }
    if (strcmp(s, "tq2_0") == 0) { *out = LLAMA_FTYPE_MOSTLY_TQ2_0; return 0; }
    return -1;
}

static int type_of(const char * s, enum ggml_type * out) {
    if (strcmp(s, "q6_k") == 0) { *out = GGML_TYPE_Q6_K; return 0; }
    if (strcmp(s, "q4_k") == 0) { *out = GGML_TYPE_Q4_K; return 0; }
    if (strcmp(s, "q8_0") == 0) { *out = GGML_TYPE_Q8_0; return 0; }
    if (strcmp(s, "f16") == 0) { *out = GGML_TYPE_F16; return 0; }
    return -1;
}

int main(int argc, char ** argv) {
    struct llama_model_quantize_params p = llama_model_quantize_default_params();
    if (argc != 5 || ftype_of(argv[3], &p.ftype) || type_of(argv[4], &p.token_embedding_type)) {
        fprintf(stderr, "usage: %s IN.gguf OUT.gguf tq1_0|tq2_0 q6_k|q4_k|q8_0|f16\n", argv[0]);
        return 2;
    }
    p.nthread = 1;
    p.pure = true;
    llama_backend_init();
    const uint32_t rc = llama_model_quantize(argv[1], argv[2], &p);
    llama_backend_free();
    if (rc != 0) {
        fprintf(stderr, "llama_model_quantize failed (%u)\n", rc);
        return 1;
    }
    return 0;
}
