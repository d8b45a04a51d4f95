/* ProcessPrng, which Rust's standard library calls for random numbers on Windows and which
   Debian 12's wine 8 lacks, on top of RtlGenRandom (SystemFunction036), which wine has.
   Built as bcryptprimitives.dll beside the client for the differential run under wine
   (tests/tests/engines). Only for running under wine: Windows itself has the real one. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
