/*
 * Running an fpx artifact from C: load it, list its inputs and outputs, run it on a float32
 * .npy input, and compare its output with a reference .npy.
 *
 *   cargo build --release -p fpx-capi
 *   cc -std=c11 -O2 -I crates/fpx-capi/include examples/c/run_model.c \
 *      -L target/release -lfpx_c -Wl,-rpath,"$PWD/target/release" -o run_model
 *   ./run_model model.fpx examples/tiny-transformer/input.npy examples/tiny-transformer/ref_output.npy 0.5
 *
 * Exit status: 0 when the output is within TOLERANCE (max. absolute difference) of the
 * reference, 1 when it is not or anything fails (with fpx_last_error()'s message), 2 on usage.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fpx.h"

/* A float32 array read from a C-order little-endian .npy file. */
typedef struct {
    int64_t shape[FPX_MAX_RANK];
    size_t rank;
    size_t count;
    float *data;
} Array;

/* Reads a float32 (`<f4`), C-order .npy file (format versions 1 to 3). Returns 0 on success. */
static int read_npy(const char *path, Array *out) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open '%s'\n", path); return -1; }
    unsigned char magic[8];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) {
        fprintf(stderr, "'%s' is not a .npy file\n", path); fclose(f); return -1;
    }
    uint32_t header_len = 0;
    unsigned char len[4] = {0};
    size_t len_bytes = magic[6] == 1 ? 2 : 4;
    if (fread(len, 1, len_bytes, f) != len_bytes) { fclose(f); return -1; }
    for (size_t i = 0; i < len_bytes; i++) header_len |= (uint32_t)len[i] << (8 * i);
    char *header = calloc(header_len + 1, 1);
    if (!header || fread(header, 1, header_len, f) != header_len) { free(header); fclose(f); return -1; }
    if (!strstr(header, "'descr': '<f4'") || !strstr(header, "'fortran_order': False")) {
        fprintf(stderr, "'%s' is not a C-order float32 array\n", path); free(header); fclose(f); return -1;
    }
    const char *p = strstr(header, "'shape':");
    p = p ? strchr(p, '(') : NULL;
    if (!p) { fprintf(stderr, "'%s' has no shape in its header\n", path); free(header); fclose(f); return -1; }
    out->rank = 0;
    out->count = 1;
    for (p++; *p && *p != ')';) {
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p) { p++; continue; }
        if (out->rank == FPX_MAX_RANK) { free(header); fclose(f); return -1; }
        out->shape[out->rank++] = d;
        out->count *= (size_t)d;
        p = end;
    }
    free(header);
    out->data = malloc(out->count * sizeof(float) + 1);
    size_t got = fread(out->data, sizeof(float), out->count, f);
    fclose(f);
    if (got != out->count) { fprintf(stderr, "'%s' is truncated\n", path); return -1; }
    return 0;
}

static void print_infos(const char *what, const FpxTensorInfo *infos, size_t count) {
    for (size_t i = 0; i < count; i++) {
        printf("%s %s: dtype %d, [", what, infos[i].name, infos[i].dtype);
        for (int64_t d = 0; d < infos[i].rank; d++) {
            if (d) printf(", ");
            if (infos[i].dim_names[d]) printf("%s", infos[i].dim_names[d]);
            else if (infos[i].dims[d] < 0) printf("?");
            else printf("%lld", (long long)infos[i].dims[d]);
        }
        printf("]\n");
    }
}

static int fail(const char *what) {
    fprintf(stderr, "%s failed: %s\n", what, fpx_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.fpx INPUT.npy REFERENCE.npy [TOLERANCE]\n", argv[0]);
        return 2;
    }
    double tolerance = argc > 4 ? atof(argv[4]) : 0.0;
    if (fpx_api_version() != FPX_API_VERSION) {
        fprintf(stderr, "libfpx_c has API version %u, this program was built for %u\n", fpx_api_version(), FPX_API_VERSION);
        return 1;
    }

    FpxModel *model = NULL;
    if (fpx_load(argv[1], &model) != FPX_STATUS_OK) return fail("fpx_load");

    const FpxTensorInfo *inputs, *outputs;
    size_t input_count, output_count;
    if (fpx_inputs(model, &inputs, &input_count) != FPX_STATUS_OK) return fail("fpx_inputs");
    if (fpx_outputs(model, &outputs, &output_count) != FPX_STATUS_OK) return fail("fpx_outputs");
    print_infos("input", inputs, input_count);
    print_infos("output", outputs, output_count);
    if (input_count != 1 || output_count != 1) {
        fprintf(stderr, "this example runs models with one input and one output\n");
        fpx_free(model);
        return 1;
    }

    Array x, ref;
    if (read_npy(argv[2], &x) != 0 || read_npy(argv[3], &ref) != 0) { fpx_free(model); return 1; }
    FpxInput in = {inputs[0].name, FPX_DTYPE_FLOAT, x.rank, x.shape, x.data, x.count * sizeof(float)};

    /* First try with no buffer: fpx says how many bytes the output takes, then run for real. */
    FpxOutput out = {0};
    FpxStatus status = fpx_run(model, &in, 1, &out, 1);
    if (status == FPX_STATUS_BUFFER_TOO_SMALL) {
        out.capacity = out.byte_size;
        out.data = malloc(out.capacity);
        status = fpx_run(model, &in, 1, &out, 1);
    }
    if (status != FPX_STATUS_OK) return fail("fpx_run");
    if (out.dtype != FPX_DTYPE_FLOAT || out.byte_size != ref.count * sizeof(float)) {
        fprintf(stderr, "output: dtype %d, %zu bytes; the reference has %zu float32 values\n", out.dtype, out.byte_size, ref.count);
        return 1;
    }
    printf("output shape [");
    for (size_t d = 0; d < out.rank; d++) printf(d ? ", %lld" : "%lld", (long long)out.shape[d]);
    printf("]\n");

    const float *y = out.data;
    double max_abs = 0.0, dot = 0.0, yy = 0.0, rr = 0.0;
    for (size_t i = 0; i < ref.count; i++) {
        double a = y[i], b = ref.data[i];
        double d = fabs(a - b);
        if (isnan(d)) d = isnan(a) && isnan(b) ? 0.0 : INFINITY; /* NaN matches only NaN */
        if (d > max_abs) max_abs = d;
        dot += a * b; yy += a * a; rr += b * b;
    }
    double cosine = dot / (sqrt(yy) * sqrt(rr) + 1e-30);
    printf("max_abs_diff %.9g cosine %.6f\n", max_abs, cosine);
    free(out.data);
    free(x.data);
    free(ref.data);
    fpx_free(model);
    if (max_abs > tolerance) {
        printf("FAILED: max. absolute difference above %g\n", tolerance);
        return 1;
    }
    printf("OK\n");
    return 0;
}
