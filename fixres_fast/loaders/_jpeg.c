/* Region decoding with libjpeg(-turbo): only the rows and columns a crop needs, at a DCT scale.
 *
 * The FFCV decoder (fixres_fast/loaders/ffcv.py) calls decode_region through ctypes from numba-compiled
 * code. TurboJPEG 2.1's API, which FFCV's own imdecode uses, decodes whole images; libjpeg's API can skip
 * the rows above a region (entropy decoding only, no IDCT or colour conversion), stop after its last row,
 * and restrict the IDCT, upsampling and colour conversion to its columns (jpeg_crop_scanline). The pixels
 * are those of a full decode with the same settings (islow IDCT and fancy upsampling, PIL's defaults):
 * columns are decoded with a margin, because the chroma upsampler's edge columns differ from the interior.
 */
#include <Python.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <jpeglib.h>
#include <zlib.h>

#define MARGIN 4 /* columns decoded beyond each side of the region: the upsampler's context */

struct failure {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    int warned;
};

static void on_error(j_common_ptr cinfo) { longjmp(((struct failure *)cinfo->err)->jump, 1); }

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) ((struct failure *)cinfo->err)->warned = 1; /* corrupt data libjpeg decoded around */
}

/* The error handling both decoders share: libjpeg's failures jump back to the caller's setjmp, and its warnings
 * about corrupt data are noted. Call before setjmp. */
static void init(struct jpeg_decompress_struct *cinfo, struct failure *err) {
    cinfo->err = jpeg_std_error(&err->mgr);
    err->mgr.error_exit = on_error;
    err->mgr.emit_message = on_message;
    err->warned = 0;
    jpeg_create_decompress(cinfo);
}

/* Read the header of JPEG data and set RGB output at 1/denom. Call after setjmp (libjpeg may jump from here). */
static void open_scaled(struct jpeg_decompress_struct *cinfo, const uint8_t *data, uint64_t size, uint32_t denom) {
    jpeg_mem_src(cinfo, data, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);
    cinfo->out_color_space = JCS_RGB;
    cinfo->scale_num = 1;
    cinfo->scale_denom = denom;
}

/* Decode rows [top, top + height) x columns [left, left + width) of the image scaled by 1/denom
 * (denom 1, 2, 4 or 8) into dst as RGB rows of held[3] pixels: held = {first row, first column, rows,
 * columns} of the scaled image that dst holds, its columns a superset of the region's.
 * Returns 0; -1 where libjpeg fails (not a JPEG, damaged), -2 for a region outside the scaled image,
 * -3 where dst's capacity (bytes) is too small, -4 where libjpeg warned about corrupt data. */
int decode_region(const uint8_t *data, uint64_t size, uint32_t denom, int32_t top, int32_t left,
                  int32_t height, int32_t width, uint8_t *dst, uint64_t capacity, int32_t *held) {
    struct jpeg_decompress_struct cinfo;
    struct failure err;
    JSAMPROW rows[16];
    int status = 0;

    init(&cinfo, &err);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    open_scaled(&cinfo, data, size, denom);
    cinfo.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3 || top < 0 || left < 0 || height < 1 || width < 1 ||
        (int64_t)top + height > cinfo.output_height || (int64_t)left + width > cinfo.output_width) {
        status = -2;
    } else {
        JDIMENSION x = left > MARGIN ? left - MARGIN : 0;
        JDIMENSION end = (int64_t)left + width + MARGIN < cinfo.output_width ? left + width + MARGIN
                                                                             : cinfo.output_width;
        JDIMENSION w = end - x;
        if (w < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x, &w); /* x moves down to an iMCU edge */
        uint64_t stride = (uint64_t)cinfo.output_width * 3;              /* the cropped width */
        if (stride * (uint64_t)height > capacity) {
            status = -3;
        } else {
            if (top > 0) jpeg_skip_scanlines(&cinfo, top);
            while (cinfo.output_scanline < (JDIMENSION)(top + height)) {
                JDIMENSION first = cinfo.output_scanline - top, n = top + height - cinfo.output_scanline;
                if (n > 16) n = 16;
                for (JDIMENSION i = 0; i < n; i++) rows[i] = dst + (first + i) * stride;
                jpeg_read_scanlines(&cinfo, rows, n);
            }
            held[0] = top;
            held[1] = (int32_t)x;
            held[2] = height;
            held[3] = (int32_t)cinfo.output_width;
            status = err.warned ? -4 : 0;
        }
    }
    jpeg_destroy_decompress(&cinfo); /* stops early: the rows below the region are never decoded */
    return status;
}

/* Decode the whole of a JPEG at 1/8 scale (all its entropy-coded data; the IDCT of DC coefficients only) and
 * read on to its end marker: the check of a record before a backend that cannot see libjpeg's warnings
 * (PIL, DALI, nvJPEG) uses it. Returns 0, -1 where libjpeg fails, -4 where it warned about corrupt data. */
int check_jpeg(const uint8_t *data, uint64_t size) {
    struct jpeg_decompress_struct cinfo;
    struct failure err;
    JSAMPLE row[3 * 4096]; /* one output row at 1/8 scale of an image up to 32768 px wide */
    JSAMPROW rows[1] = {row};

    init(&cinfo, &err);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    open_scaled(&cinfo, data, size, 8);
    cinfo.do_fancy_upsampling = FALSE;
    jpeg_start_decompress(&cinfo);
    if ((uint64_t)cinfo.output_width * cinfo.output_components > sizeof(row)) {
        /* wider: a row buffer from libjpeg's pool, freed with it */
        JSAMPARRAY big = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                                    cinfo.output_width * cinfo.output_components, 1);
        rows[0] = big[0];
    }
    while (cinfo.output_scanline < cinfo.output_height) jpeg_read_scanlines(&cinfo, rows, 1);
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return err.warned ? -4 : 0;
}

/* zlib's CRC-32 of a record's stored bytes: what the converter wrote to NAME.crc32 for it (ffcv's decoder
 * compares the two before it trusts a record; >1 GB/s, tens of microseconds a record). */
uint32_t record_crc32(const uint8_t *data, uint64_t size) {
    uLong crc = crc32(0L, Z_NULL, 0);
    while (size > 0) { /* zlib takes uInt lengths */
        uInt n = size > (1u << 30) ? (1u << 30) : (uInt)size;
        crc = crc32(crc, data, n);
        data += n;
        size -= n;
    }
    return (uint32_t)crc;
}

/* A module, so that `import fixres_fast.loaders._jpeg` finds the library; its function is called via ctypes. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg", "decode_region, check_jpeg and record_crc32, for ctypes", -1, NULL};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
