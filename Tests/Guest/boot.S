/* The test guest's entry points.
 *
 * _start (the image's first byte, 1 MiB) is the flat-image entry of Bulkhead's VMM: 64-bit long
 * mode, ring 3, IOPL 3, RDI = command line, RSI = RAM size, RSP = 0x80000. It only clears .bss and
 * calls guest_main: no ring-0 instruction runs on that path. Its third argument says whether
 * start32 ran first: a multiboot command line starts with the image's name.
 *
 * start32 is the multiboot entry (QEMU's -kernel, through the a.out-kludge header below): 32-bit
 * protected mode, paging off, EAX = multiboot magic, EBX = multiboot information. It builds the
 * state the VMM would have (identity-mapped 4 GiB with 2 MiB user pages, a GDT with ring-3
 * segments and a TSS, long mode) and enters _start in ring 3 with iretq. */

#define MULTIBOOT_MAGIC 0x1BADB002
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
/* bit 1: memory information wanted; bit 16: the header's address fields are valid (a.out kludge). */
#define MULTIBOOT_FLAGS 0x00010002

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS (0x18 | 3)
#define USER_CS (0x20 | 3)
#define TSS_SELECTOR 0x28
#define USER_STACK 0x80000
#define USER_RFLAGS 0x3002 /* IOPL 3, IF = 0 */

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    jmp start64

    .balign 4
multiboot_header:
    .long MULTIBOOT_MAGIC
    .long MULTIBOOT_FLAGS
    .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)
    .long multiboot_header  /* header_addr */
    .long _start            /* load_addr */
    .long 0                 /* load_end_addr: the whole file */
    .long _end              /* bss_end_addr */
    .long start32           /* entry_addr */

start64:
    /* Ring 3 from here on. Keep the two arguments while .bss is cleared (rep stosb is native). */
    mov %rdi, %r12
    mov %rsi, %r13
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    cld
    rep stosb
    mov %r12, %rdi
    mov %r13, %rsi
    movzbl booted_by_multiboot(%rip), %edx
    and $-16, %rsp
    call guest_main
    ud2

    .text
    .code32
start32:
    cli
    cld
    mov $boot_stack_top, %esp
    mov %eax, %ebp                  /* the bootloader's magic */
    mov %ebx, %esi                  /* the multiboot information */

    /* Clear the tables (QEMU zeroes .bss already; this keeps the path independent of it). */
    mov $boot_tables, %edi
    mov $(boot_tables_end - boot_tables) / 4, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories; 2048 2 MiB pages cover 4 GiB.
     * Every entry is present, writable and user (0x7; 0x87 with PS for the 2 MiB pages). */
    movl $boot_pdpt + 7, boot_pml4
    mov $boot_pd + 7, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b
    mov $0x87, %eax
    mov $boot_pd, %edi
    mov $2048, %ecx
2:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    /* The TSS descriptor's base is split over three fields: assemble it here. */
    mov $boot_tss, %eax
    mov %eax, %edx
    shl $16, %eax
    or $(boot_tss_end - boot_tss - 1), %eax
    mov %eax, gdt_tss
    mov %edx, %eax
    shr $16, %eax
    and $0xFF, %eax
    or $0x8900, %eax                /* present, type 9: available 64-bit TSS */
    mov %edx, %ecx
    and $0xFF000000, %ecx
    or %ecx, %eax
    mov %eax, gdt_tss + 4
    movl $boot_stack_top, boot_tss + 4        /* RSP0 */
    movw $(boot_tss_end - boot_tss), boot_tss + 102 /* I/O bitmap beyond the limit: IOPL decides */

    lgdt gdt_pointer
    mov $0x620, %eax                /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov $0x80000033, %eax           /* CR0: PG | NE | ET | MP | PE */
    mov %eax, %cr0
    ljmp $KERNEL_CS, $long_mode

    .code64
long_mode:
    mov $KERNEL_DS, %eax
    mov %eax, %ss
    mov $USER_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov $TSS_SELECTOR, %eax
    ltr %ax
    lidt null_idt                   /* a fault in the guest is a triple fault, as under the VMM */

    /* RDI = command line, RSI = RAM size (1 MiB + mem_upper KiB), from the multiboot info. */
    lea empty_cmdline(%rip), %rdi
    mov %esi, %ebx                  /* the multiboot information (zero-extended) */
    xor %esi, %esi
    cmp $MULTIBOOT_BOOTLOADER_MAGIC, %ebp
    jne 4f
    mov (%rbx), %eax                /* flags */
    test $4, %eax
    jz 3f
    mov 16(%rbx), %edi              /* cmdline */
3:  test $1, %eax
    jz 4f
    mov 8(%rbx), %esi               /* mem_upper in KiB */
    add $1024, %rsi
    shl $10, %rsi
4:
    movb $1, booted_by_multiboot(%rip) /* the command line starts with the image's name */
    pushq $USER_DS
    pushq $USER_STACK
    pushq $USER_RFLAGS
    pushq $USER_CS
    pushq $_start
    iretq

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF        /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF        /* 0x18 user data, DPL 3 */
    .quad 0x00AFFA000000FFFF        /* 0x20 user code, 64-bit, DPL 3 */
gdt_tss:
    .quad 0, 0                      /* 0x28 TSS, 16 bytes, filled in by start32 */
gdt_end:
    .balign 4
    .word 0
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 4
    .word 0
null_idt:
    .word 0
    .quad 0
empty_cmdline:
    .byte 0
booted_by_multiboot:               /* in .data, not .bss: start64 clears .bss */
    .byte 0

    .section .bootbss, "aw", @nobits
    .balign 4096
boot_tables:
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_tss:
    .skip 104
boot_tss_end:
    .balign 16
boot_tables_end:
    .skip 4096
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
