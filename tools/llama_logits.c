/*
 * llama_logits: llama.cpp's logits for a fixed list of token ids, as JSON.
 *
 * Builds against the llama.cpp vendored in the llama-cpp-python sdist (see
 * crates/bitnet-inference/tests/fixtures/gguf_py/README.md):
 *
 *   cc -O2 -o /tmp/llamacpp/llama_logits tools/llama_logits.c \
 *      -I/tmp/llamacpp/src/include -I/tmp/llamacpp/src/ggml/include \
 *      -L/tmp/llamacpp/build/bin -lllama -lggml -lggml-base \
 *      -Wl,-rpath,/tmp/llamacpp/build/bin
 *   /tmp/llamacpp/llama_logits MODEL.gguf 1 2 3 > logits.json
 *
 * One decode of all ids at positions 0..n with logits for every position,
 * on the CPU with one thread, an f32 KV cache and flash attention off, so
 * the only approximations left are the ones llama.cpp's matmuls make (Q8_K
 * activations for TQ and k-quant weights, F16 activations for F16 weights).
 * Prints {"n_vocab": V, "ids": [...], "logits": [[...V floats...], ...]}
 * with floats in "%.9g" (round-trips f32 exactly).
 *
 */

#include "llama.h"

#include <stdio.h>
#include <stdlib.h>

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf ID [ID...]\n", argv[0]);
        return 2;
    }
    const int n = argc - 2;
    llama_log_set(quiet, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    /* Weights stay in the plain CPU buffer: no repacked or AMX copies. On
     * AMX machines ggml's AMX Q8_0 kernel dies with SIGILL (it runs tile
     * instructions without asking the kernel for the AMX state), and the
     * plain path is ggml's reference vec_dot for every type. */
    mp.use_extra_bufts = false;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", argv[1]);
        return 1;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n < 64 ? 64 : n;
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf = true;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "failed to create a context\n");
        return 1;
    }

    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        char * end = NULL;
        long id = strtol(argv[i + 2], &end, 10);
        if (*end != '\0' || id < 0 || id >= n_vocab) {
            fprintf(stderr, "bad token id %s (vocab %d)\n", argv[i + 2], n_vocab);
            return 2;
        }
        batch.token[i] = (llama_token) id;
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }

    printf("{\"n_vocab\": %d, \"ids\": [", n_vocab);
    for (int i = 0; i < n; i++) {
        printf("%s%d", i ? ", " : "", batch.token[i]);
    }
    printf("], \"logits\": [");
    for (int i = 0; i < n; i++) {
        const float * l = llama_get_logits_ith(ctx, i);
        printf("%s[", i ? ",\n" : "\n");
        for (int v = 0; v < n_vocab; v++) {
            printf("%s%.9g", v ? ", " : "", l[v]);
        }
        printf("]");
    }
    printf("]}\n");

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
